"""The report page from its Jinja2 template (``templates/report.html.j2``, autoescaped).

:func:`render` fills the template with the report's typed results; the filters below are
the only place numbers become text (units, CIs, badges). The page stays one self-contained
file: styles are inline and figures are PNG data URIs, so it opens offline.
"""

from __future__ import annotations

import math
from typing import Any

import jinja2
from markupsafe import Markup, escape

from dashboards.stats import Estimate
from dashboards.verdicts import CheckVerdict, fmt_seeds

UNKNOWN = "—"


def num(x: float | None, unit: str = "") -> str:
    """A number in its unit: percent to 2 decimals, epochs whole, else 3 significant digits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return UNKNOWN
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if unit == "%":
        return f"{x:.2f}"
    if unit == "epochs":
        return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"
    return f"{x:.3g}"


def fmt(est: Estimate | None, unit: str = "", scale: float = 1.0) -> str:
    """``value [low, high]`` (the value alone when the interval is undefined)."""
    if est is None or math.isnan(est.value):
        return UNKNOWN
    value = num(est.value * scale, unit)
    if math.isnan(est.low) or math.isnan(est.high):
        return value
    return f"{value} [{num(est.low * scale, unit)}, {num(est.high * scale, unit)}]"


def effect_text(cv: CheckVerdict) -> str:
    """A check's effect in words and units (percentage points for accuracies)."""
    effect = cv.figure if cv.figure is not None else cv.effect
    if effect is None:
        return UNKNOWN
    if cv.statistic == "time_to_threshold":
        return fmt(effect, "epochs") + " epochs saved"
    if cv.check.percent:
        return fmt(effect, "%", 100.0) + " pp"
    return fmt(effect, cv.check.unit)


def headline_unit(cv: CheckVerdict) -> str:
    """The unit of an arm's headline number (what ``ArmResult.headline`` is in)."""
    return "epochs" if cv.statistic == "time_to_threshold" else cv.check.unit


def paper_text(paper: dict[str, Any], arm: str) -> str:
    value = paper.get(arm)
    return UNKNOWN if value is None else f"{value:g}"


def badge(verdict: str | None, small: bool = False) -> Markup:
    if not verdict:
        return Markup("")
    cls = verdict.replace(" ", "") + (" small" if small else "")
    return Markup(f"<span class='badge {cls}'>{escape(verdict)}</span>")


def seeds_text(n: float | None) -> str:
    return "" if n is None else fmt_seeds(n)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dashboards", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=num, fmt=fmt, effect=effect_text, badge=badge, seeds=seeds_text, paper=paper_text
    )
    env.globals.update(headline_unit=headline_unit, UNKNOWN=UNKNOWN)
    return env


def render(**context: Any) -> str:
    """The report page; ``context`` holds what ``templates/report.html.j2`` names."""
    return _environment().get_template("report.html.j2").render(**context)
