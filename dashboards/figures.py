"""The report's figures: pure functions from arrays to matplotlib figures, and PNG encoding.

Every function takes plain numbers (the report selects and subsamples the runs) and returns a
``matplotlib.figure.Figure`` drawn on the Agg canvas: no pyplot, no global state, no display,
so figures can be made in any thread or process. :func:`png_data_uri` turns one into an
``<img src>`` that needs no file and no network. Accuracies arrive as fractions and are drawn
in percent.
"""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dashboards.stats import Estimate
from dashboards.survival import KaplanMeier
from dashboards.tuning import ExpectedMax

#: One colour per arm, the same in every figure (colour-blind safe, Okabe-Ito).
ARM_COLOURS = {
    "vanilla": "#0072B2",
    "h-detach": "#D55E00",
    "c-detach": "#009E73",
    "damp": "#CC79A7",
}
_OTHER = ("#E69F00", "#56B4E9", "#F0E442", "#000000", "#999999")
PANEL_W, PANEL_H = 3.6, 2.7
DPI = 96


@dataclass(frozen=True)
class CurvePanel:
    """Validation curves of one arm: ``shown`` is ``n_shown x E`` (NaN after a run's end),
    ``median`` the per-epoch median over *all* ``n_total`` runs (NaN where none ran)."""

    title: str
    arm: str
    shown: np.ndarray
    median: np.ndarray
    n_total: int


def colour(arm: str, index: int = 0) -> str:
    return ARM_COLOURS.get(arm, _OTHER[index % len(_OTHER)])


def _figure(n_panels: int, *, width: float = PANEL_W, height: float = PANEL_H, ncols: int = 3):
    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, -(-n_panels // ncols))
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def png_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def curves(panels: Sequence[CurvePanel], *, ylabel: str = "val acc (%)") -> Figure:
    """One panel per arm: a thin line per shown seed, the median over all seeds in bold."""
    fig, axes = _figure(len(panels))
    for i, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        c = colour(panel.arm, i)
        shown = np.asarray(panel.shown, dtype=float) * 100.0
        if shown.size:
            epochs = np.arange(1, shown.shape[1] + 1)
            # One LineCollection-like call: plot takes the columns of a 2-D array as lines.
            ax.plot(epochs, shown.T, color=c, linewidth=0.6, alpha=0.35)
        median = np.asarray(panel.median, dtype=float) * 100.0
        if median.size:
            ax.plot(np.arange(1, median.size + 1), median, color="black", linewidth=1.6)
        n_shown = shown.shape[0] if shown.ndim == 2 else 0
        subtitle = (
            f"{n_shown} of {panel.n_total} seeds"
            if n_shown < panel.n_total
            else (f"{panel.n_total} seeds")
        )
        ax.set_title(f"{panel.title}\n{subtitle}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    return fig


def distributions(
    metrics: Sequence[tuple[str, Sequence[tuple[str, str, np.ndarray]]]],
    *,
    percent: Sequence[bool] | None = None,
    log: Sequence[bool] | None = None,
    rng: np.random.Generator | None = None,
) -> Figure:
    """Strip + box per arm, one panel per metric.

    Args:
        metrics: ``(metric label, [(arm label, arm, values), ...])`` per panel; values are
            ``num_runs`` numbers (NaNs are dropped).
        percent: per panel, draw fractions as percent.
        log: per panel, log-scale y axis (gradient norms).
    """
    rng = rng or np.random.default_rng(0)
    fig, axes = _figure(len(metrics))
    for k, (ax, (label, groups)) in enumerate(zip(axes, metrics, strict=True)):
        scale = 100.0 if percent is not None and percent[k] else 1.0
        data = []
        for arm_label, arm, values in groups:
            v = np.asarray(values, dtype=float) * scale
            data.append((arm_label, arm, v[np.isfinite(v)]))
        positions = np.arange(1, len(data) + 1)
        non_empty = [(p, d) for p, d in zip(positions, data, strict=True) if d[2].size]
        if non_empty:
            ax.boxplot(
                [d[2] for _, d in non_empty],
                positions=[p for p, _ in non_empty],
                widths=0.5,
                showfliers=False,
                medianprops={"color": "black"},
            )
        for i, (p, (_, arm, v)) in enumerate(zip(positions, data, strict=True)):
            jitter = rng.uniform(-0.18, 0.18, size=v.size)
            ax.scatter(p + jitter, v, s=7, color=colour(arm, i), alpha=0.55, linewidths=0)
        ax.set_xticks(positions, [d[0] for d in data], fontsize=8, rotation=15)
        ax.set_xlim(0.4, len(data) + 0.6)
        if log is not None and log[k]:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    return fig


def intervals(
    rows: Sequence[tuple[str, Estimate]],
    *,
    xlabel: str = "P(treatment better than baseline)",
    xlim: tuple[float, float] = (-0.02, 1.02),
    references: Sequence[tuple[float, str]] = ((0.5, "-"), (0.75, ":")),
) -> Figure:
    """An interval plot: one row per label, its estimate and CI; reference lines.

    Rows whose interval is undefined show the point only.
    """
    height = max(1.4, 0.34 * len(rows) + 0.9)
    fig = Figure(figsize=(7.2, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for yi, (_, est) in zip(y, rows, strict=True):
        if np.isfinite(est.low) and np.isfinite(est.high):
            ax.plot([est.low, est.high], [yi, yi], color="#333333", linewidth=2.2)
        if np.isfinite(est.value):
            ax.plot([est.value], [yi], "o", color="#D55E00", markersize=5)
    for x, style in references:
        ax.axvline(x, color="grey", linestyle=style, linewidth=1)
    ax.set_yticks(y, [label for label, _ in rows], fontsize=8)
    ax.set_xlim(*xlim)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, axis="x")
    return fig


def success_curves(
    panels: Sequence[tuple[str, Sequence[tuple[str, str, KaplanMeier]]]],
) -> Figure:
    """Kaplan-Meier fraction of runs that reached the threshold by each epoch, with band.

    Args:
        panels: ``(panel title, [(arm label, arm, fit[, censoring epochs[, colour]]), ...])``;
            each censored run (one that never reached the threshold) is marked with a tick.
    """
    fig, axes = _figure(len(panels), ncols=2, width=4.4)
    for ax, (title, fits) in zip(axes, panels, strict=True):
        for i, fit in enumerate(fits):
            label, arm, km = fit[:3]
            c = fit[4] if len(fit) > 4 and fit[4] else colour(arm, i)
            ax.step(km.epochs, km.reached * 100.0, where="post", color=c, label=label)
            ax.fill_between(
                km.epochs, km.low * 100.0, km.high * 100.0, step="post", color=c, alpha=0.18
            )
            if len(fit) > 3 and len(fit[3]):  # censored runs: a tick where each left
                at = np.clip(np.asarray(fit[3], dtype=int), 1, km.epochs[-1]) - 1
                ax.plot(km.epochs[at], km.reached[at] * 100.0, "|", color=c, markersize=9)
        ax.set_ylim(-2, 102)
        ax.set_xlabel("epoch")
        ax.set_ylabel("runs that reached it (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return fig


def expected_max(
    panels: Sequence[tuple[str, Sequence[tuple[str, str, ExpectedMax]]]],
) -> Figure:
    """Expected best validation accuracy among n trials (Dodge et al. 2019), mean +- std.

    Args:
        panels: ``(panel title, [(series label, arm, curve), ...])``; curves in fractions.
    """
    fig, axes = _figure(len(panels), ncols=2, width=4.4)
    for ax, (title, series) in zip(axes, panels, strict=True):
        for i, (label, arm, em) in enumerate(series):
            c = colour(arm, i)
            mean, std = em.mean * 100.0, em.std * 100.0
            ax.plot(em.n_trials, mean, color=c, label=label, marker="." if mean.size < 30 else "")
            ax.fill_between(em.n_trials, mean - std, mean + std, color=c, alpha=0.15)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("number of trials (configurations)")
        ax.set_ylabel("expected best val acc (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return fig


@dataclass(frozen=True)
class Series:
    """One arm of a setup over epochs: ``values`` is ``num_seeds x E`` (NaN after a run's
    end); the figure draws every seed thin and the mean with its 95% t-band thick."""

    label: str
    arm: str
    values: np.ndarray
    colour: str | None = None


def config_colours(arms: Sequence[str]) -> list[str]:
    """One colour per configuration: an arm's first keeps the arm's colour, further ones of
    the same arm (h-detach at another p) take the next free colours."""
    spare = iter(c for c in _OTHER if c not in ARM_COLOURS.values())
    seen: set[str] = set()
    out = []
    for arm in arms:
        out.append(
            ARM_COLOURS.get(arm, "")
            if arm not in seen and arm in ARM_COLOURS
            else next(spare, "#777777")
        )
        seen.add(arm)
    return out


def _mean_band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-epoch mean and Student-t 95% band over the seeds still running."""
    from scipy import stats as sps

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        n = np.sum(np.isfinite(values), axis=0)
        mean = np.nanmean(values, axis=0)
        sd = np.nanstd(values, axis=0, ddof=1)
        half = sps.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    half = np.where(n >= 2, half, np.nan)
    return mean, mean - half, mean + half


def band_curves(
    panels: Sequence[tuple[str, Sequence[Series]]],
    *,
    ylabel: str,
    percent: bool,
    max_curves: int,
    rng: np.random.Generator,
) -> Figure:
    """One panel per setup: each arm's seeds as thin lines (at most ``max_curves``, a random
    sample), its mean as a thick line with a 95% band (the paper's Fig 2/3 style)."""
    fig, axes = _figure(len(panels), ncols=2, width=4.6, height=3.0)
    scale = 100.0 if percent else 1.0
    for ax, (title, series) in zip(axes, panels, strict=True):
        for i, s in enumerate(series):
            c = s.colour or colour(s.arm, i)
            values = np.asarray(s.values, dtype=float) * scale
            if values.size == 0:
                continue
            epochs = np.arange(1, values.shape[1] + 1)
            pick = values
            if values.shape[0] > max_curves:
                pick = values[np.sort(rng.choice(values.shape[0], max_curves, replace=False))]
            ax.plot(epochs, pick.T, color=c, linewidth=0.5, alpha=0.3)
            mean, low, high = _mean_band(values)
            ax.fill_between(epochs, low, high, color=c, alpha=0.2, linewidth=0)
            ax.plot(epochs, mean, color=c, linewidth=2.0, label=f"{s.label} (n={values.shape[0]})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if percent:
            ax.set_ylim(-2, 102)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return fig


def lr_curves(
    panels: Sequence[tuple[str, Sequence[tuple[str, str, np.ndarray, np.ndarray]]]],
    *,
    ylabel: str = "best val acc (%)",
) -> Figure:
    """One panel per problem: per arm, its best validation accuracy against the learning rate
    (one dot per seed, the mean with its 95% t-interval), log x axis.

    Args:
        panels: ``(title, [(label, arm, lrs, values), ...])``; ``lrs`` and ``values`` are
            ``num_runs`` each, values in fractions.
    """
    from scipy import stats as sps

    fig, axes = _figure(len(panels), ncols=2, width=4.6, height=3.0)
    for ax, (title, series) in zip(axes, panels, strict=True):
        for i, (label, arm, lrs, values) in enumerate(series):
            c = colour(arm, i)
            lrs, values = np.asarray(lrs, float), np.asarray(values, float) * 100.0
            ok = np.isfinite(lrs) & np.isfinite(values)
            ax.scatter(lrs[ok], values[ok], s=8, color=c, alpha=0.4, linewidths=0)
            grid = np.unique(lrs[ok])
            means, errs = [], []
            for lr in grid:
                v = values[ok][lrs[ok] == lr]
                means.append(v.mean())
                n = v.size
                errs.append(sps.t.ppf(0.975, n - 1) * v.std(ddof=1) / np.sqrt(n) if n > 1 else 0)
            ax.errorbar(grid, means, yerr=errs, color=c, marker="o", linewidth=1.6, capsize=3,
                        label=label)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return fig


@dataclass(frozen=True)
class LadderSeries:
    """One check's effect at each copying delay it was judged at (``effects`` with CIs, in
    display units), and the paper's effect at its own delay (``paper``: (T, effect) or None)."""

    label: str
    delays: np.ndarray
    effects: Sequence[Estimate]
    scales: Sequence[str]
    paper: tuple[float, float] | None = None


def ladder(panels: Sequence[tuple[str, str, Sequence[LadderSeries]]]) -> Figure:
    """The scale ladder: one panel per metric, the treatment's effect over the baseline with
    its 95% CI against the copying delay T (log scale), one line per check; the paper's
    effect as a star at the paper's T; filled markers at paper scale, open ones otherwise.

    Args:
        panels: ``(title, y label, series)``.
    """
    fig, axes = _figure(len(panels), ncols=2, width=4.6, height=3.0)
    for ax, (title, ylabel, series) in zip(axes, panels, strict=True):
        ax.axhline(0.0, color="grey", linewidth=1)
        for i, s in enumerate(series):
            c = _OTHER[i % len(_OTHER)] if i else ARM_COLOURS["h-detach"]
            order = np.argsort(s.delays)
            x = np.asarray(s.delays, float)[order]
            # Several setups at one delay (other budgets) sit side by side.
            x = x * (1 + 0.04 * (np.arange(x.size) - np.searchsorted(x, x)))
            est = [s.effects[j] for j in order]
            y = np.array([e.value for e in est])
            low = np.array([e.low for e in est])
            high = np.array([e.high for e in est])
            err = np.vstack(
                [np.where(np.isnan(low), 0, y - low), np.where(np.isnan(high), 0, high - y)]
            )
            ax.errorbar(x, y, yerr=err, color=c, linewidth=1.2, capsize=3, label=s.label)
            paper_scale = np.array([s.scales[j] == "paper scale" for j in order])
            ax.scatter(x[paper_scale], y[paper_scale], color=c, s=30, zorder=3)
            ax.scatter(x[~paper_scale], y[~paper_scale], facecolors="white", edgecolors=c, s=30,
                       zorder=3)  # fmt: skip
            if s.paper is not None:
                ax.scatter([s.paper[0]], [s.paper[1]], marker="*", s=140, color=c,
                           edgecolors="black", linewidths=0.6, zorder=4,
                           label=f"paper, {s.label}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("copying delay T")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return fig
