"""What the study measured, setup by setup: the section the report opens with.

For every setup in the data (largest first, at most ``MAX_SETUPS``): validation accuracy and
loss against the epoch per arm (each seed thin, the mean with its 95% band thick, the paper's
Fig 2/3 style; validation perplexity for the language model, CIDEr-D and BLEU-4 for
captioning), epochs to the runs' threshold per arm as Kaplan-Meier curves (censored runs
marked; classification tasks only), and one sentence computed from the statistics (on the
task's headline metric, ``contract.headline_metric``). Where several learning rates ran on
otherwise the same setup, best validation accuracy against the learning rate per arm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dashboards import figures, stats, survival
from dashboards import runs as runs_mod
from dashboards.sections import Figure
from dashboards.setups import Setup, SetupIndex, lr_text
from trainables.contract import LOWER_IS_BETTER, TASKS, TEXT_TASKS, VANILLA, headline_metric

MAX_SETUPS = 8
_ARM_KEYS = ("arm", "p_detach", "c_detach", "damp")


@dataclass(frozen=True)
class Curve:
    column: str  # a history column
    ylabel: str
    what: str  # "Validation accuracy"
    percent: bool = False


_LOSS = Curve("val_loss", "val loss", "Validation loss")
#: Per task: the curves drawn per setup and the metric its sentence compares.
CURVES = {
    "language_model": (
        Curve("val_ppl", "val perplexity", "Validation perplexity"),
        Curve("val_loss", "val loss (nats/token)", "Validation loss"),
    ),
    "captioning": (
        Curve("val_cider", "val CIDEr-D (x100)", "Validation CIDEr-D (greedy)"),
        Curve("val_bleu4", "val BLEU-4 (x100)", "Validation BLEU-4 (greedy)"),
        _LOSS,
    ),
}
_DEFAULT_CURVES = (Curve("val_acc", "val acc (%)", "Validation accuracy", percent=True), _LOSS)
#: How a sentence names each task's headline metric (``contract.headline_metric``).
HEADLINE_WORDS = {
    "test_perplexity": "test perplexity at the best validation epoch",
    "test_cider": "test CIDEr-D (x100) at the best validation CIDEr",
    "best_val_acc": "best validation accuracy",
}


@dataclass(frozen=True)
class SetupSection:
    setup: Setup
    n_runs: int
    sentence: str
    figures: list[Figure]


def _arm_label(row: pd.Series) -> str:
    arm = str(row.get("arm", "?"))
    for key, name in (("p_detach", "h-detach"), ("c_detach", "c-detach"), ("damp", "damp")):
        value = row.get(key)
        if arm == name and isinstance(value, int | float) and not math.isnan(value):
            return f"{arm} {value:g}"
    return arm


def arms(frame: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(label, arm, runs) per configuration of a setup, vanilla first."""
    keys = [k for k in _ARM_KEYS if k in frame.columns]
    groups = [
        (_arm_label(g.iloc[0]), str(g.iloc[0].get("arm", "?")), g)
        for _, g in frame.groupby(keys, dropna=False, sort=True)
    ]
    return sorted(groups, key=lambda g: (g[1] != VANILLA, g[0]))


def _threshold(frame: pd.DataFrame) -> float | None:
    if "threshold" not in frame.columns or frame["threshold"].isna().all():
        return None
    return float(frame["threshold"].mode().iloc[0])


def _horizon(frame: pd.DataFrame, last: np.ndarray) -> int:
    planned = frame["epochs"].to_numpy(float) if "epochs" in frame.columns else np.array([])
    return max(1, int(np.nanmax(np.r_[last, planned, 1.0])))


def _sentence(
    setup: Setup,
    groups: Sequence[tuple[str, str, pd.DataFrame]],
    index: runs_mod.HistoryIndex,
    threshold: float | None,
    rng: np.random.Generator,
    n_resamples: int,
) -> str:
    """One sentence per setup from the statistics: epochs to the threshold where any run
    reached it, else best validation accuracy; each treatment against the vanilla baseline."""
    base = next((g for g in groups if g[1] == VANILLA), None)
    if base is None:
        return f"At {setup.short()}: no vanilla baseline in this setup, so nothing is compared."
    treatments = [g for g in groups if g[1] != VANILLA]
    if threshold is not None and "run_id" in base[2].columns:
        text = _time_sentence(setup, base, treatments, index, threshold, rng, n_resamples)
        if text is not None:
            return text
    column = headline_metric(setup.task)
    sign = -1.0 if column in LOWER_IS_BETTER else 1.0

    def shown(x: np.ndarray) -> str:  # accuracies are fractions; the others in their units
        return f"{100 * np.mean(x):.1f}%" if column == "best_val_acc" else f"{np.mean(x):.3g}"

    clauses = []
    for label, _, runs_t in treatments:
        if column not in runs_t.columns:
            continue
        a, b, paired = runs_mod.paired_values(runs_t, base[2], column)
        if a.size and b.size:
            p = stats.compare(
                sign * a, sign * b, rng, paired=paired, n_resamples=n_resamples
            ).p_improve
            clauses.append(
                f"{label} {shown(a)} (vanilla {shown(b)}), "
                f"P({label} better) = {p.value:.2f} [{p.low:.2f}, {p.high:.2f}], "
                + (f"{a.size} paired seeds" if paired else f"{a.size} vs {b.size} seeds")
            )
    if not clauses:
        return f"At {setup.short()}: no treatment to compare with vanilla yet."
    return f"At {setup.short()}, {HEADLINE_WORDS[column]} (mean): " + "; ".join(clauses) + "."


def _reach_text(km: survival.KaplanMeier, event: np.ndarray, horizon: int) -> str:
    med = survival.median_epochs(km).value
    if math.isinf(med) or math.isnan(med):
        return f"{int(event.sum())} of {event.size} runs within {horizon} epochs"
    return f"{med:.0f} epochs (median)"


def _time_sentence(setup, base, treatments, index, threshold, rng, n_resamples) -> str | None:
    runs_b = base[2]
    fb, lb = index.reach(runs_b["run_id"].tolist(), threshold)
    reached_any = np.isfinite(fb).any()
    fits = []
    for label, _, runs_t in treatments:
        ft, lt = index.reach(runs_t["run_id"].tolist(), threshold)
        reached_any |= np.isfinite(ft).any()
        fits.append((label, runs_t, ft, lt))
    if np.isnan(lb).all() or not reached_any:
        return None  # no history, or nobody reached it: best accuracy says more
    horizon = _horizon(pd.concat([runs_b, *(f[1] for f in fits)]), lb)
    tb, eb = survival.censored_epochs(fb, lb)
    ok_b = ~np.isnan(lb)
    km_b = survival.kaplan_meier(tb[ok_b], eb[ok_b], horizon)
    clauses = [f"vanilla reaches it in {_reach_text(km_b, eb[ok_b], horizon)}"]
    for label, runs_t, ft, lt in fits:
        tt, et = survival.censored_epochs(ft, lt)
        ok_t = ~np.isnan(lt)
        if not ok_t.any():
            continue
        km_t = survival.kaplan_meier(tt[ok_t], et[ok_t], horizon)
        pairs = runs_mod.pair(runs_t.assign(_t=tt, _e=et), runs_b.assign(_t=tb, _e=eb))
        if pairs is not None:
            pairs = pairs[pairs["_t_t"].notna() & pairs["_t_b"].notna()]
        if pairs is not None and len(pairs) >= 2:
            data = [pairs[c].to_numpy() for c in ("_t_t", "_e_t", "_t_b", "_e_b")]
            seeds, paired = f"{len(pairs)} paired seeds", True
        else:
            data = [tt[ok_t], et[ok_t], tb[ok_b], eb[ok_b]]
            seeds, paired = f"{ok_t.sum()} vs {ok_b.sum()} seeds", False
        p = survival.time_to_threshold_comparison(
            *data, rng, horizon=horizon, paired=paired, n_resamples=n_resamples
        ).p_faster
        clauses.append(
            f"{label} in {_reach_text(km_t, et[ok_t], horizon)}, P({label} faster) = "
            f"{p.value:.2f} [{p.low:.2f}, {p.high:.2f}], {seeds}"
        )
    return (
        f"At {setup.short()}, to {100 * threshold:g}% validation accuracy: "
        + "; ".join(clauses)
        + "."
    )


def _success_panel(groups, index, threshold, frame) -> tuple[str, list] | None:
    fits = []
    colours = figures.config_colours([arm for _, arm, _ in groups])
    for (label, arm, runs), c in zip(groups, colours, strict=True):
        first, last = index.reach(runs["run_id"].tolist(), threshold)
        ok = ~np.isnan(last)
        if not ok.any():
            continue
        time, event = survival.censored_epochs(first[ok], last[ok])
        km = survival.kaplan_meier(time, event, _horizon(frame, last[ok]))
        fits.append((f"{label} (n={int(ok.sum())})", arm, km, time[~event], c))
    title = f"val acc >= {100 * threshold:g}%"
    return (title, fits) if fits else None


def setup_sections(
    runs: pd.DataFrame,
    setup_index: SetupIndex,
    index: runs_mod.HistoryIndex,
    rng: np.random.Generator,
    *,
    n_resamples: int,
    max_curves: int,
) -> tuple[list[SetupSection], int]:
    """The sections of the largest setups, and how many setups were left out."""
    splits = setup_index.split(runs) if not runs.empty else []
    # Task by task (the paper's order), largest setup first within each.
    order = {task: i for i, task in enumerate(TASKS)}
    splits.sort(key=lambda g: order.get(g[0].task, len(order)))
    sections = []
    for setup, frame in splits[:MAX_SETUPS]:
        groups = arms(frame)
        words = setup.words()
        out: list[Figure] = []
        for curve in CURVES.get(setup.task, _DEFAULT_CURVES):
            colours = figures.config_colours([arm for _, arm, _ in groups])
            series = [
                figures.Series(label, arm, index.matrix(g["run_id"].tolist(), curve.column), c)
                for (label, arm, g), c in zip(groups, colours, strict=True)
                if "run_id" in g.columns
            ]
            series = [s for s in series if s.values.size]
            if not series:
                continue
            fig = figures.band_curves([("", series)], ylabel=curve.ylabel, percent=curve.percent,
                                      max_curves=max_curves, rng=rng)  # fmt: skip
            what = curve.what
            out.append(Figure(
                f"{what} per epoch", figures.png_data_uri(fig),
                f"{what} per epoch at {words}: each seed a thin line (at most {max_curves} "
                "per arm), the mean over seeds thick with its pointwise 95% t-interval.",
            ))  # fmt: skip
        # Reaching a validation accuracy is no question for captions or text.
        threshold = None if setup.task in TEXT_TASKS else _threshold(frame)
        if threshold is not None and "run_id" in frame.columns:
            panel = _success_panel(groups, index, threshold, frame)
            if panel is not None:
                out.append(Figure(
                    "Epochs to threshold", figures.png_data_uri(figures.success_curves([panel])),
                    f"Fraction of runs that reached {100 * threshold:g}% validation accuracy "
                    "by each epoch (Kaplan-Meier, pointwise 95% log-log band); a tick marks "
                    "each run that never reached it within its budget (censored, not dropped).",
                ))  # fmt: skip
        sentence = _sentence(setup, groups, index, threshold, rng, n_resamples)
        sections.append(SetupSection(setup, len(frame), sentence, out))
    return sections, max(0, len(splits) - MAX_SETUPS)


def lr_figure(runs: pd.DataFrame, lr_index: SetupIndex) -> Figure | None:
    """Best validation accuracy against the learning rate per arm, for every setup (less its
    learning rate) on which several learning rates ran."""
    if "lr" not in runs.columns or "best_val_acc" not in runs.columns or runs.empty:
        return None
    panels = []
    for setup, frame in lr_index.split(runs):
        if frame["lr"].nunique() < 2:
            continue
        series = [
            (label, arm, g["lr"].to_numpy(float), g["best_val_acc"].to_numpy(float))
            for label, arm, g in arms(frame)
        ]
        panels.append((setup.words(), series))
    if not panels:
        return None
    lrs = sorted({lr_text(x) for x in runs["lr"].dropna().unique()})
    return Figure(
        "Robustness to the learning rate",
        figures.png_data_uri(figures.lr_curves(panels[:MAX_SETUPS])),
        f"Best validation accuracy per seed (dots) and its mean with a 95% t-interval, against "
        f"the learning rate ({', '.join(lrs)}), per arm; one panel per setup that ran several "
        "learning rates (the question of claim C4).",
    )
