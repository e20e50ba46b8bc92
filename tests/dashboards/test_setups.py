"""Claims at the scale a study ran: setups, per-setup verdicts, the headline, the scale ladder,
and honest intervals for few seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from dashboards import claims as cl
from dashboards import sections, setups, stats, survival
from dashboards.evaluate import evaluate_claims
from tests.dashboards.test_claims import make_runs, sym

#: The copying smoke setup shape, at any delay.
SMOKE = {"hidden_size": "64", "num_layers": "1", "optimizer": "adam", "batch_size": "50",
         "batches_per_epoch": "250", "train_size": "3000", "clip_norm": 1.0}  # fmt: skip
PAPER_T300 = {"hidden_size": "128", "num_layers": "1", "optimizer": "adam", "batch_size": "100",
              "batches_per_epoch": "1000", "train_size": "100000", "one_hot": "False",
              "clip_norm": 1.0}  # fmt: skip


def claim(cid: str) -> cl.Claim:
    return next(c for c in cl.load_claims() if c.id == cid)


def copying(arm: str, acc, *, seq_len: int, epochs: int = 12, p: float = 0.0, **extra):
    """Copying runs in the export's string form for params (as MLflow gives them back)."""
    runs = make_runs("copying", arm, acc, p_detach=p, seq_len=seq_len, epochs=epochs, lr=0.01)
    for key, value in {**SMOKE, **extra}.items():
        runs[key] = value
    return runs


def ladder_study(rng: np.random.Generator) -> pd.DataFrame:
    """Two reduced copying setups: at T=5 h-detach is worse, at T=20 it is better (mirrored
    seed noise, :func:`sym`: symmetric differences, which the shape gate lets through)."""
    parts = []
    for seq_len, van, hd in ((5, 0.8, 0.5), (20, 0.4, 0.7)):
        parts.append(copying("vanilla", sym(rng, van, 0.02, 8), seq_len=seq_len))
        parts.append(copying("h-detach", sym(rng, hd, 0.02, 8), seq_len=seq_len, p=0.25))
    return pd.concat(parts, ignore_index=True)


def test_setup_words_scale_and_normalised_values():
    runs = copying("vanilla", [0.5], seq_len=20, epochs=15)
    ((setup, frame),) = setups.split(runs)
    assert len(frame) == 1
    assert setup.words() == (
        "copying T=20, 64 units, 15 epochs x 250 batches of 50, lr 1e-2, clip 1.0"
    )
    paper = claim("C2").checks[0].paper_setup
    assert setup.scale(paper) == setups.REDUCED
    big = copying("vanilla", [0.5], seq_len=1000, epochs=15)
    assert setups.split(big)[0][0].scale(paper) == setups.OTHER  # T above the paper's
    full = make_runs("copying", "vanilla", [0.5], seq_len=300, epochs=600, lr=1e-3)
    for key, value in PAPER_T300.items():
        full[key] = value
    assert setups.split(full)[0][0].scale(paper) == setups.PAPER
    assert setups.normalise("128") == 128.0 and setups.normalise("None") is None
    assert setups.normalise("True") is True and setups.normalise(float("nan")) is None
    assert setups.lr_text(0.0005) == "5e-4" and setups.lr_text(0.0015) == "1.5e-3"


def test_verdict_per_setup_and_the_headline_picks_the_larger(rng):
    (v,) = evaluate_claims([claim("C2")], ladder_study(rng), None, 0, n_resamples=300)
    best = [cv for cv in v.by_setup if cv.name == "p=0.25 best val acc higher"]
    assert sorted(cv.setup.delay for cv in best) == [5.0, 20.0]
    by_delay = {cv.setup.delay: cv for cv in best}
    assert by_delay[5.0].verdict == "contradicted" and by_delay[20.0].verdict == "supported"
    assert all(cv.scale == setups.REDUCED for cv in best)
    headline = v.checks[0]
    assert headline.setup.delay == 20.0 and headline.verdict == "supported"
    assert headline.reason.startswith("Reduced scale (copying T=20, 64 units, 12 epochs")
    assert v.scale == setups.REDUCED
    # The p=0.5 checks have no treatment runs: no verdict, whatever the scale.
    assert v.checks[3].verdict == "no runs yet"


def test_pairs_never_cross_setups(rng):
    base = copying("vanilla", rng.normal(0.5, 0.02, 8), seq_len=20)
    wider = copying("h-detach", rng.normal(0.9, 0.02, 8), seq_len=20, p=0.25, hidden_size="128")
    longer = copying("h-detach", rng.normal(0.9, 0.02, 8), seq_len=20, p=0.25, epochs=24)
    for treatment in (wider, longer):
        (v,) = evaluate_claims(
            [claim("C2")], pd.concat([base, treatment], ignore_index=True), None, 0
        )
        assert v.checks[0].verdict == "no runs yet"
        assert "share no setup" in v.checks[0].reason
    # The same seeds in the same setup pair up.
    same = copying("h-detach", rng.normal(0.9, 0.02, 8), seq_len=20, p=0.25)
    (v,) = evaluate_claims([claim("C2")], pd.concat([base, same], ignore_index=True), None, 0)
    assert v.checks[0].paired and v.checks[0].details["n_pairs"] == 8


def test_paper_numbers_only_at_paper_scale(rng):
    reduced = ladder_study(rng)
    full = pd.concat(
        [
            make_runs("copying", "vanilla", rng.normal(0.8, 0.02, 8), seq_len=300, epochs=600),
            make_runs("copying", "h-detach", rng.normal(0.99, 0.005, 8), seq_len=300,
                      epochs=600, p_detach=0.25),
        ],
        ignore_index=True,
    )  # fmt: skip
    for key, value in PAPER_T300.items():
        full[key] = value
    (v,) = evaluate_claims(
        [claim("C2")], pd.concat([reduced, full], ignore_index=True), None, 0, n_resamples=300
    )
    headline = v.checks[0]
    assert headline.at_paper_scale and headline.setup.delay == 300.0  # paper scale wins
    assert [cv.at_paper_scale for cv in v.by_setup if cv.name == headline.name].count(True) == 1
    # The paper's tables take only paper-scale verdicts.
    assert all(cv.at_paper_scale for cv in sections._checks_of([v], "C2"))


def test_the_ladder_has_one_point_per_delay_with_intervals(rng):
    study = ladder_study(rng)
    (v,) = evaluate_claims([claim("C2")], study, None, 0, n_resamples=300)
    panels = {(title, ylabel): series for title, ylabel, series in sections.ladder_panels(v)}
    (series,) = [s for s in panels["best_val_acc", "difference (pp)"] if s.label == "p=0.25"]
    assert sorted(series.delays) == [5.0, 20.0]
    for effect in series.effects:
        assert math.isfinite(effect.low) and math.isfinite(effect.high)
        assert effect.low < effect.value < effect.high  # in percentage points
    by_delay = dict(zip(series.delays, series.effects, strict=True))
    assert by_delay[5.0].high < 0 < by_delay[20.0].low
    assert series.paper == (300.0, 100 - 82)  # the paper's point, at its own T
    assert sections.ladder_figure(v) is not None


@pytest.mark.parametrize(
    "a, b",
    [
        ([0.9, 0.9, 0.9], [0.5, 0.5, 0.5]),  # every pair won
        ([0.1, 0.2, 0.3], [0.5, 0.6, 0.7]),  # every pair lost
        ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # every pair tied
        ([0.9, 0.1, 0.5], [0.5, 0.5, 0.5]),
    ],
)
def test_three_paired_seeds_never_give_a_zero_width_interval(a, b):
    rng = np.random.default_rng(0)
    p = stats.compare(np.array(a), np.array(b), rng, paired=True).p_improve
    assert p.high - p.low > 0.3, p
    assert p.low <= p.value <= p.high
    unpaired = stats.compare(np.array(a), np.array(b), rng, paired=False).p_improve
    assert unpaired.high - unpaired.low > 0.3, unpaired
    time = survival.time_to_threshold_comparison(
        np.array([3.0, 4.0, 5.0]), np.ones(3, bool), np.array([8.0, 9.0, 12.0]),
        np.array([True, True, False]), rng, horizon=12, paired=True,
    ).p_faster  # fmt: skip
    assert time.high - time.low > 0.3 and time.value == 1.0


def test_ten_seeds_and_more_keep_exact_intervals():
    """Issue 20: no percentile bootstrap from 10 seeds on (it was too narrow): 12 wins of 12
    give Clopper-Pearson's [0.735, 1], the difference Student's t at every n."""
    rng = np.random.default_rng(0)
    b = rng.normal(size=12)
    cmp = stats.compare(b + 1.0, b, rng, paired=True)
    assert cmp.p_improve.value == 1.0 and cmp.p_improve.high == 1.0
    assert cmp.p_improve.low == pytest.approx(0.025 ** (1 / 12))
    assert cmp.difference == pytest.approx((1.0, 1.0, 1.0))
    shift = 1.0 + rng.normal(0, 0.1, 12)
    t = stats.compare(b + shift, b, rng, paired=True).difference
    half = sps.t.ppf(0.975, 11) * shift.std(ddof=1) / np.sqrt(12)
    assert (t.low, t.high) == pytest.approx((shift.mean() - half, shift.mean() + half))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_text_task_setups_name_corpus_and_decoder_and_keep_their_keys_to_themselves():
    lm = make_runs("language_model", "vanilla", [1.1, 1.2], seq_len=64, epochs=10, lr=2e-3)
    lm = lm.assign(corpus="pydoc", level="char", hidden_size="256", batch_size="32",
                   decoder="show_and_tell")  # fmt: skip
    cap = make_runs("captioning", "vanilla", [90.0, 95.0], epochs=5, lr=1e-3)
    cap = cap.assign(corpus="coco", decoder="soft_attention", hidden_size="512",
                     batch_size="32", train_size="80000", level="char")  # fmt: skip
    # every run logs every option: a copying run's (unused) decoder must not split its setup
    cp = copying("vanilla", [0.5, 0.6], seq_len=20).assign(corpus="pydoc")
    cp.loc[cp.index[0], "decoder"], cp.loc[cp.index[1], "decoder"] = "show_and_tell", "other"
    found = {s.task: s for s, _ in setups.split(pd.concat([lm, cap, cp], ignore_index=True))}
    assert set(found) == {"language_model", "captioning", "copying"}
    assert found["language_model"].words() == (
        "language_model pydoc char-level (64-step windows), 256 units, 10 epochs, batch 32, "
        "lr 2e-3, clip 1.0"
    )
    assert (
        found["captioning"]
        .words()
        .startswith("captioning coco soft attention, 512 units, 5 epochs on 80,000 images of 32")
    )
    assert found["copying"].get("decoder") is None and found["copying"].get("corpus") is None
    ptb = claim("C10").checks[0].paper_setup
    assert found["language_model"].scale(ptb) == setups.OTHER  # 64-step windows > PTB's 35
    coco = claim("C8").checks[0].paper_setup
    assert found["captioning"].scale(coco) == setups.REDUCED  # smaller in every size
    digits = cap.assign(corpus="digit_scenes")
    ((other, _),) = setups.split(digits)
    assert other.scale(coco) == setups.OTHER  # another dataset is not a reduced COCO


def test_one_arm_one_interval_in_the_check_table_and_the_configuration_table():
    """Issue 20: vanilla at T=5 showed [62.67, 83.57] in a check table and [61.16, 81.56] in
    the configuration table (two bootstrap streams). Both now read Student's t of the same
    values: one number, one interval."""
    from dashboards import configs

    rng = np.random.default_rng(5)
    runs = pd.concat(
        [
            make_runs("copying", "h-detach", rng.uniform(0.5, 0.9, 6), p_detach=0.25),
            make_runs("copying", "vanilla", rng.uniform(0.5, 0.9, 6)),
        ],
        ignore_index=True,
    )
    claim = cl.parse_claims(
        {
            "claims": [
                {
                    "id": "C97",
                    "title": "t",
                    "source": "t",
                    "task": "copying",
                    "checks": [{"metric": "best_val_acc", "comparison": "better"}],
                }
            ]
        }
    )[0]
    (v,) = evaluate_claims([claim], runs, None, 0, n_resamples=500)
    rows = configs.configuration_table(runs, np.random.default_rng(99), n_resamples=700)
    by_arm = {r.arm: r.best_val_acc.mean for r in rows}
    check = v.checks[0]
    for arm in (check.treatment, check.baseline):
        assert arm.summary.mean == by_arm[arm.arm]
        x = runs.loc[runs["arm"] == arm.arm, "best_val_acc"].to_numpy()
        half = sps.t.ppf(0.975, 5) * x.std(ddof=1) / np.sqrt(6)
        assert arm.summary.mean.high - arm.summary.mean.value == pytest.approx(half)
