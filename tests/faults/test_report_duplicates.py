"""Issue 21, failure 2 as the report sees it: two drivers on one study (before the study lock)
left every (configuration, seed) twice, and the report counted 4 seeds per arm where 2 exist.
The dataset's reader keeps each once and says so."""

from __future__ import annotations

import pandas as pd
import pytest

from dashboards import export


def _runs(ids: list[str], seeds: list[int], status: list[str]) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "run_id": ids,
            "task": ["copying"] * n,
            "config_id": ["p0.25_lr0.01_clip"] * n,
            "seed": seeds,
            "status": status,
            "start_time": pd.to_datetime(range(n), unit="s", utc=True),
            "best_val_acc": [0.5 + 0.1 * i for i in range(n)],
        }
    )


def _history(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"run_id": ids, "epoch": [1] * len(ids), "val_acc": [0.1] * len(ids)})


def test_runs_repeating_a_configuration_and_seed_count_once_and_loudly(tmp_path):
    ids = ["a0", "a1", "b0", "b1"]  # a second driver repeated seeds 0 and 1
    runs = _runs(ids, [0, 1, 0, 1], ["FAILED", "FINISHED", "FINISHED", "FINISHED"])
    export.write_frames(tmp_path, "twice", runs, _history(ids))
    with pytest.warns(RuntimeWarning, match="2 runs repeat a \\(configuration, seed\\)"):
        loaded, history = export.load(tmp_path, "twice")
    assert sorted(loaded["run_id"]) == ["a1", "b0"]  # the finished run of each seed
    assert sorted(loaded["seed"]) == [0, 1]
    assert sorted(history["run_id"]) == ["a1", "b0"]


def test_distinct_seeds_load_without_a_warning(tmp_path, recwarn):
    ids = ["a0", "a1"]
    export.write_frames(tmp_path, "once", _runs(ids, [0, 1], ["FINISHED"] * 2), _history(ids))
    loaded, _ = export.load(tmp_path, "once")
    assert len(loaded) == 2
    assert not [w for w in recwarn if "repeat" in str(w.message)]


def test_a_truncated_parquet_file_is_named_in_one_line(tmp_path):
    ids = ["a0", "a1"]
    export.write_frames(tmp_path, "cut", _runs(ids, [0, 1], ["FINISHED"] * 2), _history(ids))
    (part,) = [p for p in tmp_path.rglob("*.parquet") if "runs" in p.parts]
    part.write_bytes(part.read_bytes()[:40])
    with pytest.raises(export.ExportError, match=f"dataset file {part} is unreadable") as err:
        export.load(tmp_path, "cut")
    assert len(str(err.value).splitlines()) == 1
