"""The whole path, as a user runs it: a small real study -> export -> report -> a browser.

``python study/run.py`` on the embedded local Ray with a local MLflow store, then
``hdetach-study report`` on its experiment, then the HTML opened in real headless Chromium:
no console errors, every figure rendered, the verdict table present.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import DevTools, open_page, page_errors, screenshot

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}
SCREENSHOT_COPY = Path("/tmp/hdetach_e2e_report.png")


@pytest.mark.slow
def test_study_export_report_in_a_browser(tmp_path: Path, chromium: DevTools):
    (tmp_path / "study.yaml").write_text(
        "search: fixed\nconfigs:\n  - {p_detach: 0.25, lr: 0.01, clip: true}\n"
    )
    study = [
        sys.executable, str(ROOT / "study" / "run.py"), "--config", "study.yaml",
        "--task", "copying", "--preset", "smoke", "--seeds", "3", "--epochs", "3",
        "--set", "batches_per_epoch=30", "--set", "train_size=1000", "--set", "val_size=200",
        "--set", "transfer_size=100", "--experiment", "e2e", "--verbose", "0",
    ]  # fmt: skip
    ran = subprocess.run(study, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists()  # the embedded default store

    out = tmp_path / "reports" / "e2e" / "first"
    report = [str(Path(sys.executable).with_name("hdetach-study")), "report", "--experiment", "e2e"]
    made = subprocess.run(
        [*report, "--out", str(out)], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    # the numbers a later --since compares with: every configuration with its 3 seeds, the
    # vanilla baseline among them, and a verdict for every claim
    assert summary["experiment"] == "e2e"
    configs = summary["configs"]
    assert {c["arm"] for c in configs.values()} >= {"vanilla", "h-detach"}, configs
    assert all(c["n"] == 3 for c in configs.values()), configs
    assert summary["n_runs"] == sum(c["n"] for c in configs.values())
    assert sorted(summary["claims"]) == sorted(f"C{i}" for i in range(1, 11))

    open_page(chromium, out / "index.html")
    assert page_errors(chromium.events) == []
    images = chromium.evaluate(
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert images and all(done and width > 0 for done, width, _ in images), images
    verdicts = chromium.evaluate(
        "Array.from(document.querySelectorAll('#verdicts tbody tr')).map(r => r.innerText)"
    )
    assert len(verdicts) == 10  # C1..C10, each with a verdict
    words = ("supported", "contradicted", "inconclusive", "no runs yet", "no data")
    assert all(any(w in v for w in words) for v in verdicts), verdicts
    # A smoke study (T=5) is judged at its own, reduced scale: the copying claims get a
    # verdict there; captioning has no runs.
    by_claim = {v.split("\t")[0]: v for v in verdicts}
    assert "no runs yet" not in by_claim["C2"] and "reduced scale" in by_claim["C2"]
    assert "no runs yet" in by_claim["C8"]
    # The report leads with the study: the setup's curves, rendered, and its sentence.
    study = chromium.evaluate(
        "Array.from(document.querySelectorAll('#study ~ h3, #study ~ p.sentence'))"
        ".map(e => e.innerText).slice(0, 2)"
    )
    assert study[0].startswith("copying T=5, 64 units, 3 epochs x 30 batches"), study
    assert study[1].startswith("At copying T=5") and "vanilla" in study[1], study
    curves = chromium.evaluate(
        "Array.from(document.images).filter(i => i.alt.startsWith('Validation accuracy'))"
        ".map(i => [i.complete, i.naturalWidth])"
    )
    assert curves and all(done and width > 0 for done, width in curves), curves
    # ... and the study's own configurations are all there, paired with their baseline
    text = chromium.evaluate("document.body.innerText")
    configurations = text[text.index("Configurations") :]
    assert "hd_p0.25_lr1.000e-02_clip" in configurations
    assert "vanilla_p0_lr1.000e-02_clip" in configurations
    png = screenshot(chromium)
    (tmp_path / "report.png").write_bytes(png)
    if os.access(SCREENSHOT_COPY.parent, os.W_OK):
        SCREENSHOT_COPY.write_bytes(png)
