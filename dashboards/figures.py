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
        panels: ``(panel title, [(arm label, arm, fit), ...])``.
    """
    fig, axes = _figure(len(panels), ncols=2, width=4.4)
    for ax, (title, fits) in zip(axes, panels, strict=True):
        for i, (label, arm, km) in enumerate(fits):
            c = colour(arm, i)
            ax.step(km.epochs, km.reached * 100.0, where="post", color=c, label=label)
            ax.fill_between(
                km.epochs, km.low * 100.0, km.high * 100.0, step="post", color=c, alpha=0.18
            )
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
