"""The HTML report: verdicts, self-containedness, --since, bad input, MLflow logging, and the
page as real headless Chromium renders it (driven through the DevTools protocol)."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import uuid
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from dashboards import cli as report_cli
from dashboards import export
from study.tracking import StudyTracker
from tests.browser import DevTools, open_page, page_errors, screenshot
from trainables.contract import EPOCH_METRICS

EXPERIMENT = "synthetic-report"
SCREENSHOT_COPY = Path("/tmp/report_screenshot.png")

# (config_id, task, arm, p_detach, seq_len, best val acc mean, spread, test acc mean)
# Copying T=300: h-detach wins clearly (C2). pMNIST: h-detach loses (C5). Copying T=100:
# h-detach learns faster (C1).
CONFIGS = [
    ("c300-van", "copying", "vanilla", 0.0, 300, 0.62, 0.08, math.nan),
    ("c300-p25", "copying", "h-detach", 0.25, 300, 0.997, 0.001, math.nan),
    ("c300-p50", "copying", "h-detach", 0.5, 300, 0.995, 0.002, math.nan),
    ("c100-van", "copying", "vanilla", 0.0, 100, 0.995, 0.002, math.nan),
    ("c100-p25", "copying", "h-detach", 0.25, 100, 0.997, 0.001, math.nan),
    ("pm-van", "pmnist", "vanilla", 0.0, 784, 0.925, 0.002, 0.922),
    ("pm-p25", "pmnist", "h-detach", 0.25, 784, 0.905, 0.002, 0.902),
]


# The paper's setups (dashboards/claims.yaml): the synthetic study runs at paper scale.
PAPER_COPYING = {"one_hot": False, "hidden_size": 128, "num_layers": 1, "optimizer": "adam",
                 "batch_size": 100, "batches_per_epoch": 1000, "train_size": 100_000,
                 "epochs": 600, "lr": 1e-3, "clip_norm": 1.0}  # fmt: skip
PAPER_MNIST = {"pixel_pool": 1, "hidden_size": 100, "num_layers": 1, "optimizer": "adam",
               "batch_size": 100, "train_size": 50_000, "val_size": 10_000, "epochs": 200,
               "lr": 1e-3, "clip_norm": 1.0}  # fmt: skip
# Table 1 of the paper, accuracy % per arm at T = 200 ... 5000 (trained at T=100).
TRANSFER = {"vanilla": (64.85, 48.17, 43.03, 28.82, 19.48, 14.58),
            "h-detach": (90.72, 77.76, 74.68, 63.19, 51.83, 42.35)}  # fmt: skip


def antithetic(rng: np.random.Generator, n: int, size: int = 1) -> np.ndarray:
    """``(n, size)`` standard normal noise whose seeds come in mirrored pairs (seed i + n//2
    has minus seed i's draw; an odd middle seed gets 0), so that every paired difference of
    two arms drawn this way is symmetric about its mean: the shape gate
    (``pairedstats.shape``) then lets a clear effect through, as these tests' answers assume.
    """
    half = rng.normal(size=(n // 2, size))
    return np.concatenate([half, np.zeros((n % 2, size)), -half])


def synthetic(seeds: range, seed: int = 0, **setup: object) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs and history in the export's schema, for `seeds` of every configuration, at the
    paper's setups (``setup`` overrides columns of every run, e.g. a smaller budget). The
    noise across seeds is :func:`antithetic`."""
    rng = np.random.default_rng(seed)
    runs, history = [], []
    for config_id, task, arm, p, seq_len, mean, spread, test in CONFIGS:
        paper = dict(PAPER_COPYING if task == "copying" else PAPER_MNIST)
        paper.update(setup)
        n_epochs = int(paper["epochs"])
        epochs = np.arange(1, n_epochs + 1)
        noise = antithetic(rng, len(seeds), 8)
        late = rng.integers(0, 4, (len(seeds) + 1) // 2)
        late = np.concatenate([late, 3 - late[: len(seeds) // 2]])
        for i, s in enumerate(seeds):
            final = float(np.clip(mean + spread * noise[i, 0], 0, 1))
            start = (6 if arm == "h-detach" else 14) + late[i]
            curve = final / (1 + np.exp(-(epochs - start) / 1.5))
            run_id = f"{config_id}-s{s}"
            thr = 0.99
            reached = np.nonzero(curve >= thr)[0]
            row = {
                **paper,
                "run_id": run_id, "task": task, "config_id": config_id, "arm": arm,
                "p_detach": p, "c_detach": 0.0, "clip": True, "seq_len": seq_len, "seed": s,
                "last_epoch": n_epochs, "threshold": thr, "best_val_acc": float(curve.max()),
                "epochs_to_threshold": float(reached[0] + 1) if reached.size else math.nan,
                "test_acc_at_best": test + 0.002 * noise[i, 1] if task == "pmnist" else None,
                "diverged": False, "censored": False, "max_grad_norm": 0.9,
                "status": "FINISHED",
            }  # fmt: skip
            if task == "copying" and seq_len == 100:
                table = TRANSFER["h-detach" if arm == "h-detach" else "vanilla"]
                for j, (delay, acc) in enumerate(zip((200, 400, 500, 1000, 2000, 5000), table,
                                                     strict=True)):  # fmt: skip
                    row[f"transfer_acc_T{delay}"] = float(acc / 100 + 0.01 * noise[i, 2 + j])
            runs.append(row)
            frame = pd.DataFrame({"run_id": run_id, "epoch": epochs, "val_acc": curve})
            for key in EPOCH_METRICS:
                if key != "val_acc":
                    frame[key] = rng.random(n_epochs)
            history.append(frame)
    return pd.DataFrame(runs), pd.concat(history, ignore_index=True)


def write_data(data_dir: Path, seeds: range) -> None:
    runs, history = synthetic(seeds)
    export.write_frames(data_dir, EXPERIMENT, runs, history)


def make_report(data_dir: Path, out: Path, *extra: str) -> int:
    return report_cli.main(
        ["--experiment", EXPERIMENT, "--data-dir", str(data_dir), "--out", str(out),
         "--no-export", "--resamples", "300", "--max-curves", "5", *extra]
    )  # fmt: skip


class _Page(HTMLParser):
    """Collects the tags of a page with their attributes, and the verdict table's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.verdict_rows: dict[str, str] = {}
        self._row: str | None = None
        self._text: list[str] = []
        self._in_verdicts = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table" and attrs.get("id") == "verdicts":
            self._in_verdicts = True
        if self._in_verdicts and tag == "tr" and attrs.get("id", "").startswith("row-"):
            self._row, self._text = attrs["id"][4:], []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_verdicts = False
        if tag == "tr" and self._row is not None:
            self.verdict_rows[self._row] = " ".join(self._text)
            self._row = None

    def handle_data(self, data):
        if self._row is not None:
            self._text.append(data)


def has_id(text: str, element_id: str) -> bool:
    return re.search(rf"id=['\"]{element_id}['\"]", text) is not None


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def verdict_of(row_text: str) -> str:
    for verdict in ("supported", "contradicted", "inconclusive", "no runs yet", "no data"):
        if verdict in row_text:
            return verdict
    raise AssertionError(f"no verdict in {row_text!r}")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report on 8 seeds per configuration, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("report")
    write_data(root / "data", range(8))
    out = root / "reports" / "full"
    assert make_report(root / "data", out) == 0
    return out


def test_verdict_table_and_self_contained_page(built: Path) -> None:
    html_path = built / "index.html"
    page = parse(html_path)
    assert set(page.verdict_rows) == {f"C{i}" for i in range(1, 11)}
    verdicts = {cid: verdict_of(text) for cid, text in page.verdict_rows.items()}
    assert verdicts["C2"] == "supported"  # the clear win
    assert verdicts["C5"] == "contradicted"  # the loss
    assert verdicts["C8"] == "no runs yet" and verdicts["C9"] == "no data"
    # Our number with its CI beside the paper's, seeds per arm.
    assert re.search(r"h-detach: 99\.\d\d \[99\.\d\d, 99\.\d\d\]", page.verdict_rows["C2"])
    assert "h-detach: 100" in page.verdict_rows["C2"] and "8 / 8" in page.verdict_rows["C2"]
    assert "paper scale" in page.verdict_rows["C2"]

    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) >= 8
    for attrs in images:
        src = attrs["src"]
        if src.startswith("data:"):
            kind, payload = src.split(",", 1)
            assert kind == "data:image/png;base64"
            assert base64.b64decode(payload)[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert (built / src).is_file(), src
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "poster", "data"):
            value = attrs.get(name) or ""
            assert not re.match(r"\s*(https?:)?//", value), (tag, name, value)
        assert tag not in ("script", "iframe", "object", "embed"), tag
    text = html_path.read_text(encoding="utf-8")
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", text)
    assert "Table 1" in text and "Table 2" in text and has_id(text, "configs")

    summary = json.loads((built / "summary.json").read_text())
    assert summary["claims"]["C2"]["verdict"] == "supported"
    assert summary["configs"]["copying/c300-p25"]["n"] == 8


def test_reduced_scale_verdicts_without_the_papers_numbers(tmp_path: Path) -> None:
    """The same study at a smaller budget is judged at reduced scale: verdicts, but the
    paper's numbers stay out of our rows and the paper's tables wait for paper-scale runs."""
    runs, history = synthetic(range(8), epochs=40)
    export.write_frames(tmp_path / "data", EXPERIMENT, runs, history)
    assert make_report(tmp_path / "data", tmp_path / "out") == 0
    page = parse(tmp_path / "out" / "index.html")
    c2 = page.verdict_rows["C2"]
    assert verdict_of(c2) == "supported" and "reduced scale" in c2
    assert "40 epochs x 1000 batches" in c2 and "paper scale only" in c2
    assert "h-detach: 100" not in c2 and "vanilla: 82" not in c2
    text = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "Table 1:" not in text and "Table 2:" not in text
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["claims"]["C2"]["scale"] == "reduced scale"


def test_since_reports_changed_verdicts_and_new_seeds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_data(data, range(3))  # 3 seeds per arm: below min_seeds, all inconclusive
    first = tmp_path / "reports" / "20260101T000000Z"
    assert make_report(data, first) == 0
    assert verdict_of(parse(first / "index.html").verdict_rows["C2"]) == "inconclusive"

    write_data(data, range(8))
    second = tmp_path / "reports" / "20260102T000000Z"
    assert make_report(data, second, "--since", "latest") == 0
    text = (second / "index.html").read_text(encoding="utf-8")
    changed = text[re.search(r"id=['\"]verdicts-changed", text).start() :]
    changed = changed[: changed.index("</table>")]
    assert re.search(
        r"<td>C2</td><td><span class='badge inconclusive small'>inconclusive"
        r"</span></td><td><span class='badge supported small'>supported",
        changed,
    )
    assert re.search(r"<td>C5</td>.*inconclusive.*contradicted", changed)
    assert has_id(text, "new-seeds") and "copying/c300-p25" in text
    assert has_id(text, "tightened")
    assert str(first) in text

    # An explicit directory works the same; a directory without summary.json is bad input.
    third = tmp_path / "reports" / "third"
    assert make_report(data, third, "--since", str(first)) == 0
    assert make_report(data, tmp_path / "r4", "--since", str(tmp_path)) == 2


def test_several_experiments_in_one_report(tmp_path: Path) -> None:
    runs, history = synthetic(range(6))
    copying = runs["task"] == "copying"
    data = tmp_path / "data"
    export.write_frames(data, "study-copying", runs[copying], history)
    export.write_frames(data, "study-pmnist", runs[~copying], history)
    out = tmp_path / "out"
    argv = ["--experiment", "study-copying", "--experiment", "study-pmnist", "--no-export"]
    assert report_cli.main([*argv, "--data-dir", str(data), "--out", str(out)]) == 0
    page = parse(out / "index.html")
    assert verdict_of(page.verdict_rows["C2"]) == "supported"
    assert verdict_of(page.verdict_rows["C5"]) == "contradicted"
    assert json.loads((out / "summary.json").read_text())["n_runs"] == len(runs)
    assert report_cli.default_out(["a", "b/c"], tmp_path).parent == tmp_path / "a_b_c"


def test_bad_local_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing_db = tmp_path / "nowhere.db"
    code = report_cli.main(
        [
            "--experiment",
            "x",
            "--tracking-uri",
            f"sqlite:///{missing_db}",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no MLflow database" in err
    assert not missing_db.exists()  # nothing created
    assert make_report(tmp_path / "empty", tmp_path / "r2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no exported dataset" in err


@pytest.mark.slow
def test_unknown_experiment_exits_2_and_creates_nothing(
    mlflow_server: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    name = f"absent-{uuid.uuid4().hex[:8]}"
    code = report_cli.main(
        ["--experiment", name, "--tracking-uri", mlflow_server, "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown experiment" in err
    assert MlflowClient(mlflow_server).get_experiment_by_name(name) is None
    assert not (tmp_path / "r").exists()
    code = report_cli.main(["--experiment", name, "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unreachable" in err


@pytest.mark.slow
def test_report_from_mlflow_is_logged_as_a_report_run(mlflow_server: str, tmp_path: Path) -> None:
    name = f"report-{uuid.uuid4().hex[:8]}"
    tracker = StudyTracker(mlflow_server, name)
    tracker.start()
    for config_id, p in (("van", 0.0), ("hd", 0.25)):
        params = {"task": "copying", "p_detach": p, "lr": 1e-3, "clip": True, "seq_len": 300}
        tags = {"task": "copying", "arm": "h-detach" if p else "vanilla"}
        tracker.parent_run(config_id, params, tags)
        for seed in range(2):
            run_id = tracker.child_run(config_id, seed, {**params, "seed": seed}, tags)
            tracker.log_epochs(run_id, [{"epoch": e, "val_acc": e / 4} for e in (1, 2, 3)])
            tracker.finish(run_id, {"best_val_acc": 0.75 + p, "last_epoch": 3})
    out = tmp_path / "reports" / name / "first"
    argv = ["--experiment", name, "--tracking-uri", mlflow_server, "--resamples", "200"]
    assert report_cli.main([*argv, "--out", str(out)]) == 0
    assert (out / "index.html").is_file() and (tmp_path / "reports" / name / "data").is_dir()
    # The bottom line first; the export's logistics collapsed at the end.
    page = (out / "index.html").read_text(encoding="utf-8")
    details = page.index('<details id="export-details">')
    assert page.index('id="bottom-line"') < page.index('id="verdicts"') < details
    assert "Data: " in page[details:] and "Data: " not in page[:details]

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(name)
    (run,) = client.search_runs([experiment.experiment_id], "tags.run_kind = 'report'")
    assert run.info.status == "FINISHED" and run.data.tags["claim.C2"] == "inconclusive"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "index.html",
        "summary.json",
    }
    # The report run is not a child: the next export sees no new run.
    result = export.export(mlflow_server, name, tmp_path / "reports" / name / "data")
    assert (result.runs_total, result.runs_new) == (4, 0)
    second = tmp_path / "reports" / name / "second"
    assert report_cli.main([*argv, "--out", str(second), "--since", "latest"]) == 0
    assert "first" in (second / "index.html").read_text(encoding="utf-8")
    assert len(client.search_runs([experiment.experiment_id], "tags.run_kind = 'report'")) == 2


# Real headless Chromium through the DevTools protocol: see tests/browser.py


@pytest.mark.slow
def test_report_renders_in_headless_chromium(built: Path, chromium: DevTools, tmp_path: Path):
    open_page(chromium, built / "index.html")
    assert page_errors(chromium.events) == []
    requested = [
        e["params"]["request"]["url"]
        for e in chromium.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested and all(u.startswith(("file:", "data:")) for u in requested), requested

    images = chromium.evaluate(
        "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert len(images) >= 8
    assert all(complete and width > 0 for complete, width, _ in images), images
    rows = chromium.evaluate("document.querySelectorAll('#verdicts tbody tr').length")
    assert rows == 10
    c2 = chromium.evaluate("document.querySelector('#row-C2').innerText")
    assert "supported" in c2
    # The bottom line is on the first screen and says what the verdicts say.
    bottom = chromium.evaluate("document.querySelector('#bottom-line').innerText")
    assert bottom.startswith("Bottom line.") and "on 8 seeds" in bottom, bottom
    assert re.search(r"support [^.]*C2 \(", bottom) and re.search(r"contradict C5 \(", bottom)
    top = chromium.evaluate("document.querySelector('#bottom-line').getBoundingClientRect().top")
    assert 0 < top < chromium.evaluate("window.innerHeight")

    png = screenshot(chromium)  # a full-page screenshot for a person to look at
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "report.png").write_bytes(png)
    if os.access(SCREENSHOT_COPY.parent, os.W_OK):
        SCREENSHOT_COPY.write_bytes(png)


def test_the_studys_own_test_shows_raw_and_adjusted_in_the_configuration_table(tmp_path):
    """Issue 20: the study's per-configuration p-values (raw, adjusted, the correction and the
    decision after it), written on the child runs, reach the configuration table and
    summary.json; a configuration the study did not test shows none."""
    runs, history = synthetic(range(8))
    tested = runs["config_id"] == "c300-p25"
    runs.loc[tested, "family_p_value"] = 0.004
    runs.loc[tested, "family_p_adjusted"] = 0.012
    runs.loc[tested, "family_decision_adjusted"] = 1.0
    runs.loc[tested, "tag.correction"] = "holm"
    # a configuration whose test the shape gate held back (decision undecided: no code)
    held = runs["config_id"] == "c300-p50"
    runs.loc[held, "family_p_value"] = 0.03
    runs.loc[held, "family_p_adjusted"] = 0.06
    runs.loc[held, "tag.correction"] = "holm"
    runs.loc[held, "gate_skewness"] = -0.72
    runs.loc[held, "gate_pairs_needed"] = 37.0
    runs.loc[held, "gate_withheld"] = 1.0
    runs.loc[tested, "gate_withheld"] = 0.0
    runs.loc[tested, "gate_pairs_needed"] = 2.0
    runs.loc[tested, "gate_skewness"] = 0.1
    export.write_frames(tmp_path / "data", EXPERIMENT, runs, history)
    assert make_report(tmp_path / "data", tmp_path / "out") == 0
    configs = json.loads((tmp_path / "out" / "summary.json").read_text())["configs"]
    test = configs["copying/c300-p25"]["study_test"]
    assert test == {
        "p_value": 0.004,
        "p_adjusted": 0.012,
        "correction": "holm",
        "decision_adjusted": "better",
        "shape_gate": {"skewness": 0.1, "pairs_needed": 2.0, "withheld": False},
    }
    assert configs["copying/c300-p50"]["study_test"]["shape_gate"] == {
        "skewness": -0.72,
        "pairs_needed": 37.0,
        "withheld": True,
    }
    others = [c["study_test"] for k, c in configs.items() if k[8:] not in ("c300-p25", "c300-p50")]
    assert others and all(t["correction"] is None for t in others)
    text = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "0.004 (0.012, holm)<br><small>better</small>" in text
    assert (
        "0.03 (0.06, holm)<br><small>undecided; held back by the shape gate: needs 37 pairs"
        "</small>" in text
    )
