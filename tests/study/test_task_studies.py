"""The language model and captioning through ``study/run.py`` on local Ray: each task's own
per-epoch and final metrics reach MLflow, the search ranks on the task's selection value, and
the report gives their claims (C10, C8) verdicts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.study.test_study import ENV, RUN, _children, _steps
from tests.trainables.caption_files import write_captions, write_ptb

EPOCHS = 2


def _study(tmp_path: Path, task: str, p: str, *extra: str) -> tuple[MlflowClient, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        *RUN, "--task", task, "--preset", "smoke", "--search", "grid", "--p-values", p,
        "--lr-values", "0.01", "--clip-values", "true", "--trials", "1", "--seeds", "3",
        "--seeds-per-trial", "3", "--cpus-per-trial", "1", "--epochs", str(EPOCHS),
        "--tracking-uri", uri, "--experiment", task, "--storage-path", str(tmp_path / "runs"),
        "--verbose", "1", *extra,
    ]  # fmt: skip
    result = subprocess.run(
        args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return MlflowClient(uri), uri, result.stdout


def _report(tmp_path: Path, uri: str, experiment: str) -> dict:
    out = tmp_path / "report"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("hdetach-study")), "report", "--experiment",
         experiment, "--tracking-uri", uri,
         "--out", str(out), "--no-log-run", "--resamples", "300"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def _mean_se(values: list[float]) -> float:
    x = np.asarray(values)
    return float(x.mean() - x.std(ddof=1) / math.sqrt(x.size))


@pytest.mark.slow
def test_language_model_study(tmp_path):
    write_ptb(tmp_path / "ptb")
    client, uri, out = _study(
        tmp_path, "language_model", "0.25", "--data-dir", str(tmp_path / "ptb"),
        "--set", "corpus=ptb", "--set", "level=word", "--set", "hidden_size=24",
        "--set", "embedding_size=16", "--set", "batches_per_epoch=30", "--set", "seq_len=20",
    )  # fmt: skip
    children = _children(client, "language_model")
    assert len(children) == 6
    by_config: dict[str, list] = {}
    perplexity: dict[str, list] = {}
    for child in children:
        m = child.data.metrics
        assert _steps(client, child.info.run_id, "val_ppl") == list(range(1, EPOCHS + 1))
        assert m["test_perplexity"] == pytest.approx(math.exp(m["test_loss"]), rel=1e-6)
        assert m["best_val_score"] == pytest.approx(1 / m["best_val_perplexity"], rel=1e-6)
        assert child.data.params["corpus"] == "ptb" and child.data.params["level"] == "word"
        by_config.setdefault(child.data.tags["config_id"], []).append(m["best_val_score"])
        perplexity.setdefault(child.data.tags["config_id"], []).append(m["test_perplexity"])
    exp = client.get_experiment_by_name("language_model")
    for parent in client.search_runs([exp.experiment_id], "tags.run_kind = 'parent'"):
        scores = by_config[parent.data.tags["config_id"]]
        assert parent.data.metrics["objective"] == pytest.approx(_mean_se(scores))
    # the console summary ranks on that objective and shows the task's own metric
    assert "mean = test_perplexity over seeds" in out
    summary = out[out.index("Configurations, best first") :].splitlines()
    row = next(line for line in summary if "vanilla_p0_lr1.000e-02_clip" in line)
    mean = float(np.mean(perplexity["vanilla_p0_lr1.000e-02_clip"]))
    assert f"{mean:.4g}" in row.split()

    c10 = _report(tmp_path, uri, "language_model")["claims"]["C10"]["checks"]
    (check,) = c10.values()
    assert check["verdict"] not in ("no runs yet", "no data")
    assert check["arms"]["h-detach"]["n"] == check["arms"]["vanilla"]["n"] == 3


@pytest.mark.slow
def test_captioning_study(tmp_path):
    write_captions(tmp_path / "coco", sizes=(40, 10, 10))  # the paper's p for Soft Attention
    client, uri, _ = _study(
        tmp_path, "captioning", "0.4", "--data-dir", str(tmp_path / "coco"),
        "--set", "decoder=soft_attention", "--set", "hidden_size=24",
        "--set", "embedding_size=16", "--set", "batches_per_epoch=10",
    )  # fmt: skip
    children = _children(client, "captioning")
    assert len(children) == 6
    for child in children:
        m = child.data.metrics
        for key in ("val_cider", "val_bleu4", "val_loss"):
            assert _steps(client, child.info.run_id, key) == list(range(1, EPOCHS + 1)), key
        history = client.get_metric_history(child.info.run_id, "val_cider")
        assert m["best_val_cider"] == pytest.approx(max(p.value for p in history))
        assert {"test_bleu1", "test_bleu4", "test_rouge_l", "test_cider"} <= set(m)
        assert child.data.params["decoder"] == "soft_attention"

    checks = _report(tmp_path, uri, "captioning")["claims"]["C8"]["checks"]
    attention = [c for name, c in checks.items() if name.startswith("Soft Attention")]
    show_tell = [c for name, c in checks.items() if name.startswith("Show&Tell")]
    assert len(attention) == 2 and all(c["verdict"] != "no runs yet" for c in attention)
    assert all(c["verdict"] == "no runs yet" for c in show_tell)  # that decoder did not run
