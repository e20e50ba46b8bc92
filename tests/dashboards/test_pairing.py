"""Arms pair seed by seed only inside one setup, task-specific setup keys included."""

from __future__ import annotations

import pandas as pd

from dashboards.runs import pair
from trainables.contract import PAIR_KEYS, SETUP_KEYS, TASK_SETUP_KEYS


def test_the_pairing_key_is_the_whole_setup_and_the_seed():
    assert set(PAIR_KEYS) == {*SETUP_KEYS, "seed"}
    assert set(TASK_SETUP_KEYS) <= set(PAIR_KEYS)


def _runs(corpus: str, value: float) -> pd.DataFrame:
    return pd.DataFrame(
        {"task": "language_model", "corpus": corpus, "lr": 1.0, "seed": [0, 1, 2], "v": value}
    )


def test_language_model_runs_of_different_corpora_do_not_pair():
    treat = pd.concat([_runs("ptb", 1.0), _runs("wikitext2", 2.0)], ignore_index=True)
    base = _runs("ptb", 0.5)
    # Without the corpus in the key, treat's seeds repeat and nothing pairs at all; with it,
    # each ptb seed pairs with its ptb baseline and the wikitext2 runs stay out.
    pairs = pair(treat, base)
    assert pairs is not None and len(pairs) == 3
    assert (pairs["v_t"] == 1.0).all() and (pairs["corpus"] == "ptb").all()
