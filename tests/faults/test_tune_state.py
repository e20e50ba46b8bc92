"""Issue 21, failure 4 (resume after a full disk): Tune's state files truncated by a full
disk are mended before ``Tuner.restore`` reads them (it would otherwise start the study over
in the same folder). Fast cases on hand-made files; ``test_disk_full.py`` is the real one."""

from __future__ import annotations

import json
import pickle

import pytest

from study.preflight import StudyError
from study.tune_state import mend_tune_state

OLD, NEW = "2026-12-06_10-00-00", "2026-12-06_11-00-00"


def _session(folder, stamp, trials=("t_b0_1", "t_b1_2"), truncate=False):
    folder.mkdir(parents=True, exist_ok=True)
    state = {"trial_data": [[json.dumps({"custom_dirname": t}), "{}"] for t in trials]}
    files = {
        f"experiment_state-{stamp}.json": json.dumps(state).encode(),
        f"search_gen_state-{stamp}.json": pickle.dumps({"counter": len(trials)}),
        f"searcher-state-{stamp}.pkl": pickle.dumps({"queue": list(trials)}),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data[: len(data) // 2] if truncate else data)
    return files


@pytest.fixture
def study(tmp_path, monkeypatch):
    exp = tmp_path / "runs" / "exp" / "main"
    for trial in ("t_b0_1", "t_b1_2"):
        (exp / trial).mkdir(parents=True)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "raytmp"))
    monkeypatch.setattr("study.tune_state._ray_temp_roots", lambda: [tmp_path / "raytmp" / "ray"])
    return exp


def _staged(study, stamp, session="session_1"):
    return (
        study.parents[2]
        / "raytmp"
        / "ray"
        / session
        / "artifacts"
        / stamp
        / "main"
        / ("driver_artifacts")
    )


def test_a_truncated_state_is_replaced_by_the_copy_ray_staged(study):
    _session(study, NEW, truncate=True)
    files = _session(_staged(study, NEW), NEW)
    _session(_staged(study, NEW, "session_2"), NEW, trials=("other_b0_9",))  # another study
    (notes,) = mend_tune_state(str(study))
    assert "restored from the copy Ray staged" in notes and "session_1" in notes
    for name, data in files.items():
        assert (study / name).read_bytes() == data


def test_without_a_staged_copy_the_session_before_is_resumed(study):
    old = _session(study, OLD)
    _session(study, NEW, truncate=True)
    (notes,) = mend_tune_state(str(study))
    assert "set aside" in notes
    assert sorted(p.name for p in study.glob("*-*")) == sorted(
        [*old, *(f"{n}.truncated" for n in _session(study.parent / "x", NEW))]
    )


def test_no_intact_state_at_all_stops_the_resume(study):
    _session(study, NEW, truncate=True)
    with pytest.raises(StudyError, match="truncated .* start the study again"):
        mend_tune_state(str(study))


def test_an_intact_state_is_left_alone(study):
    files = _session(study, NEW)
    assert mend_tune_state(str(study)) == []
    assert {n: (study / n).read_bytes() for n in files} == files


def test_a_truncated_last_line_of_the_optuna_journal_is_cut_off(study, tmp_path):
    _session(study, NEW)
    journal = tmp_path / "main.optuna.journal"
    journal.write_text('{"op_code":0}\n{"op_code":4,"stu')
    (notes,) = mend_tune_state(str(study), str(journal))
    assert "Optuna journal" in notes and journal.read_text() == '{"op_code":0}\n'
