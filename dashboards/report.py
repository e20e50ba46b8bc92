"""The study report: claim verdicts, figures and tables as one self-contained HTML page.

:func:`build_report` takes the ``runs`` / ``history`` frames of :mod:`dashboards.dataset`,
judges the paper's claims (:mod:`dashboards.verdicts`), summarises every configuration
(:mod:`dashboards.configs`), draws the figures (:mod:`dashboards.sections`) and writes into
one directory:

* ``index.html``: the report (``templates/report.html.j2``). Figures are PNG data URIs,
  styles are inline: the page loads no file and makes no request, so it opens offline, from
  an e-mail or an MLflow artifact view.
* ``summary.json``: the numbers a later report compares itself with (:func:`compare`): seeds
  and intervals per configuration, verdicts, effects and intervals per claim and check.

Reading order of the page: the bottom line (:mod:`dashboards.bottom_line`: what ran, what
can and cannot be concluded at this scale, the next command and its cost), the verdict table
(one row per claim: our number with its CI beside the paper's, seeds per arm), what changed
since the previous report, the paper's
Tables 1 and 2 beside ours, one section per claim (its checks, per-seed validation curves per
arm, distributions of the final metrics, P(A>B) with its CI, Kaplan-Meier success curves),
the per-configuration table and the expected best validation accuracy against the number of
trials (Dodge et al. 2019); the export's details, collapsed, last.

Figures stay readable at any scale: at most ``max_curves`` seed curves per panel (a fixed-seed
random sample; the bold median is over all seeds and the caption says how many are shown).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dashboards import claims as claims_mod
from dashboards import overview, sections, stats
from dashboards.bottom_line import bottom_line
from dashboards.configs import ConfigRow, configuration_table, sequential_table
from dashboards.evaluate import Context, evaluate_claims
from dashboards.render import render
from dashboards.verdicts import Verdict, verdict_json

REPORT_FILE = "index.html"
SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT = 1
MAX_CURVES = sections.MAX_CURVES


@dataclass
class Report:
    """A written report: where it is, its numbers, and how long each stage took."""

    out_dir: Path
    html: Path
    summary: dict[str, Any]
    verdicts: list[Verdict]
    changes: dict[str, Any] | None
    seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Summary (summary.json) and the comparison with a previous report


def _est(e: stats.Estimate | None) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "low": e.low, "high": e.high}


def make_summary(
    experiment: str,
    runs: pd.DataFrame,
    verdicts: Sequence[Verdict],
    config_rows: Sequence[ConfigRow],
) -> dict[str, Any]:
    """The numbers a later report compares with (JSON-ready; NaN become null on writing)."""
    configs = {
        row.key: {
            "task": row.task,
            "config_id": row.config_id,
            "arm": row.arm,
            "n": row.n,
            "best_val_acc": _est(row.best_val_acc.mean),
            "test_acc": _est(row.test_acc.mean),
            "p_improve": _est(row.p_improve),
            "study_test": {
                "p_value": row.family_p,
                "p_adjusted": row.family_p_adjusted,
                "correction": row.correction,
                "decision_adjusted": row.decision_adjusted,
                "shape_gate": {
                    "skewness": row.gate_skewness,
                    "pairs_needed": row.gate_pairs_needed,
                    "withheld": row.gate_withheld,
                },
            },
        }
        for row in config_rows
    }
    return {
        "format": SUMMARY_FORMAT,
        "experiment": experiment,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_runs": int(len(runs)),
        "n_configs": len(configs),
        "configs": configs,
        "claims": {v.claim_id: verdict_json(v) for v in verdicts},
    }


def _width(d: Mapping[str, Any] | None) -> float:
    if not d or d.get("low") is None or d.get("high") is None:
        return math.nan
    return float(d["high"]) - float(d["low"])


def _tightened(what: str, old: Mapping | None, new: Mapping | None, unit: str) -> list[dict]:
    w0, w1 = _width(old), _width(new)
    return [{"what": what, "before": w0, "now": w1, "unit": unit}] if w1 < w0 else []


def compare(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """What changed between two summaries: new seeds per configuration, intervals that
    tightened (configurations' best val acc, checks' effects), verdicts that changed."""
    new_seeds, tightened, changed = [], [], []
    prev_configs = previous.get("configs", {})
    for key, cfg in current.get("configs", {}).items():
        before = prev_configs.get(key, {}).get("n", 0)
        if cfg["n"] != before:
            new_seeds.append({"config": key, "arm": cfg["arm"], "before": before, "now": cfg["n"]})
    for key, cfg in current.get("configs", {}).items():
        old = prev_configs.get(key)
        if old is not None:
            what = f"{key}: best val acc (mean)"
            tightened += _tightened(what, old.get("best_val_acc"), cfg.get("best_val_acc"), "%")
    prev_claims = previous.get("claims", {})
    for cid, claim in current.get("claims", {}).items():
        old = prev_claims.get(cid)
        before = old["verdict"] if old else "absent"
        if before != claim["verdict"]:
            changed.append({"what": cid, "before": before, "now": claim["verdict"]})
        for name, check in claim.get("checks", {}).items():
            old_check = (old or {}).get("checks", {}).get(name)
            if old_check is None:
                continue
            if old_check["verdict"] != check["verdict"]:
                before, now = old_check["verdict"], check["verdict"]
                changed.append({"what": f"{cid} / {name}", "before": before, "now": now})
            tightened += _tightened(
                f"{cid} / {name}: effect", old_check.get("effect"), check.get("effect"),
                check.get("unit", ""),
            )  # fmt: skip
    return {
        "previous_created": previous.get("created"),
        "runs_before": previous.get("n_runs", 0),
        "runs_now": current.get("n_runs", 0),
        "new_seeds": new_seeds,
        "tightened": tightened,
        "verdicts_changed": changed,
    }


def read_summary(report_dir: str | os.PathLike) -> dict[str, Any]:
    """The summary.json of a report directory.

    Raises:
        ValueError: missing or unreadable.
    """
    path = Path(report_dir) / SUMMARY_FILE
    if not path.is_file():
        raise ValueError(f"{report_dir} is not a report directory (no {SUMMARY_FILE})")
    data = read_json_object(path, "report summary")
    if data.get("format") != SUMMARY_FORMAT:
        raise ValueError(f"{path} is not a report summary of format {SUMMARY_FORMAT}")
    return data


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a file; ValueError naming the file when it is missing or malformed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{what} file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {path} must hold a JSON object")
    return data


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# --------------------------------------------------------------------------------------------
# The whole report


def build_report(
    runs: pd.DataFrame,
    history: pd.DataFrame | None,
    out_dir: str | os.PathLike,
    *,
    experiment: str,
    claim_list: list[claims_mod.Claim] | None = None,
    benchmarks: Mapping[str, Any] | None = None,
    previous: Mapping[str, Any] | None = None,
    since_label: str | None = None,
    notes: Sequence[str] = (),
    seed: int = 0,
    n_resamples: int = stats.N_RESAMPLES,
    max_curves: int = MAX_CURVES,
) -> Report:
    """Judge the claims on `runs` / `history` and write ``index.html`` + ``summary.json``.

    Args:
        runs, history: as :func:`dashboards.dataset.load` returns them.
        out_dir: the report directory (created; files are replaced atomically).
        claim_list: default: the packaged claims.yaml.
        benchmarks: figures for benchmark claims (C9).
        previous: the summary of an earlier report, to say what changed.
        since_label: how to name that earlier report (or why there is none).
        notes: extra lines for the header (e.g. the export's summary).
        seed: drives every bootstrap and subsample: the same data give the same report.
    """
    if max_curves < 1:
        raise ValueError(f"max_curves must be >= 1, got {max_curves}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    claim_list = claim_list if claim_list is not None else claims_mod.load_claims()
    rng = np.random.default_rng(seed)
    ctx = Context(runs, history, rng, n_resamples)
    verdicts = evaluate_claims(claim_list, runs, history, rng, benchmarks, context=ctx)
    line = bottom_line(verdicts, runs, history, experiment)
    timings["claims"] = time.perf_counter() - clock

    clock = time.perf_counter()
    config_rows = configuration_table(runs, rng, n_resamples=n_resamples)
    sequential_rows = sequential_table(runs)
    summary = make_summary(experiment, runs, verdicts, config_rows)
    summary["bottom_line"] = line.text
    changes = compare(previous, summary) if previous is not None else None
    timings["configurations"] = time.perf_counter() - clock

    clock = time.perf_counter()
    setup_sections, setups_left_out = overview.setup_sections(
        ctx.runs, ctx.setups(()), ctx.index, rng, n_resamples=n_resamples, max_curves=max_curves
    )
    lr_figure = overview.lr_figure(ctx.runs, ctx.setups(("lr",)))
    claim_figures = {v.claim_id: sections.claim_figures(v, ctx, seed=seed) for v in verdicts}
    dodge = sections.expected_max_figure(config_rows)
    timings["figures"] = time.perf_counter() - clock

    clock = time.perf_counter()
    tally = Counter(v.verdict for v in verdicts)
    page = render(
        experiment=experiment,
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        n_runs=len(runs),
        tasks=sorted(runs["task"].dropna().unique().tolist()) if "task" in runs else [],
        tally=", ".join(f"{n} {verdict}" for verdict, n in tally.items()),
        notes=list(notes),
        bottom_line=line,
        setup_sections=setup_sections,
        setups_left_out=setups_left_out,
        lr_figure=lr_figure,
        verdicts=verdicts,
        changes=changes,
        since_label=since_label,
        table1=sections.table1(verdicts),
        table1_columns=sections.TABLE1_COLUMNS,
        table2=sections.table2(verdicts),
        claim_figures=claim_figures,
        config_rows=config_rows,
        sequential_rows=sequential_rows,
        dodge=dodge,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / SUMMARY_FILE, json.dumps(_json_safe(summary), indent=1, sort_keys=True))
    _write_text(out / REPORT_FILE, page)
    timings["html"] = time.perf_counter() - clock
    return Report(out, out / REPORT_FILE, summary, verdicts, changes, timings)
