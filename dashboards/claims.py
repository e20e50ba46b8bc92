"""The paper's claims C1-C10 as typed, checkable statements, read from ``claims.yaml``.

``claims.yaml`` states each claim declaratively (its header documents the fields) and
``claims.schema.json`` is its JSON Schema: :func:`load_claims` checks the document against it,
then turns it into :class:`Claim` / :class:`Check` objects, filling what a check leaves out
(the statistic from the metric, lower-is-better from the metric, the arms from the defaults).
:mod:`dashboards.verdicts` judges them on a study's runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

#: Metrics whose smaller values are better (the verdicts flip their sign).
LOWER_IS_BETTER = frozenset(
    {
        "epochs_to_threshold",
        "diverged",
        "max_grad_norm",
        "train_loss",
        "val_loss",
        "test_loss",
        "val_perplexity",
        "test_perplexity",
    }
)
#: Metrics whose spread across seeds is strongly right-skewed (a perplexity is exp of a loss; a
#: gradient norm explodes on some seeds): no test of their mean keeps its error rate at the
#: seeds a study has (docs/statistics.md, "The shape gate"), so a check may not compare their
#: mean. It compares the log (a loss in nats is log perplexity) or a rate ("exceeds").
SKEWED_METRICS = frozenset({"val_perplexity", "test_perplexity", "max_grad_norm"})
#: 0/1 metrics: judged as rates.
BOOLEAN_METRICS = frozenset({"diverged", "censored"})
_DEFAULT_ARMS = {"treatment": "h-detach", "baseline": "vanilla"}


@dataclass(frozen=True)
class Check:
    """One comparison that a claim makes (see the header of claims.yaml)."""

    name: str
    task: str | None
    metric: str
    statistic: str
    comparison: str
    treatment: str
    baseline: str
    filters: dict[str, Any]
    treatment_filters: dict[str, Any]
    baseline_filters: dict[str, Any]
    margin: float
    min_effect: float
    lower_is_better: bool
    threshold: float | None = None
    success_at: float | None = None
    exceeds: float | None = None
    select_lr: str | None = None
    #: what a mean check is decided on: "mean_difference" (paired t) or "prob_better" (the
    #: exact sign test on paired wins, ties dropped); issue 20: never both
    decide_by: str = "mean_difference"
    value: float | None = None
    unit: str = ""
    paper: dict[str, Any] = field(default_factory=dict)
    #: The paper's setup of this check: a setup matching it is at paper scale.
    paper_setup: dict[str, Any] = field(default_factory=dict)

    @property
    def compared(self) -> tuple[str, ...]:
        """Setup keys the check varies itself (so they are not part of its setup)."""
        return ("lr",) if self.select_lr == "best" or self.statistic == "lr_worst_case" else ()

    @property
    def percent(self) -> bool:
        """Whether the check's figures are accuracies shown in percent."""
        return self.unit == "%"


@dataclass(frozen=True)
class Claim:
    """A claim of the paper: id, where it is made, and the checks that test it."""

    id: str
    title: str
    source: str
    checks: tuple[Check, ...]
    min_seeds: int
    #: The paper ties the claim to the copying delay: the report draws its effect against T.
    ladder: bool = False


def _schema() -> dict[str, Any]:
    text = resources.files("dashboards").joinpath("claims.schema.json").read_text("utf-8")
    return json.loads(text)


def _comment(schema: Mapping, path) -> str | None:
    """The innermost ``$comment`` on the schema path of an error (local $refs followed)."""
    found, node = None, schema
    for key in path:
        if isinstance(node, Mapping) and "$ref" in node and key not in node:
            node = _resolve(schema, node["$ref"])
        node = node[key] if isinstance(node, Mapping | list) else None
        if node is None:
            break
        if isinstance(node, Mapping) and "$comment" in node:
            found = node["$comment"]
    return found


def _resolve(schema: Mapping, ref: str) -> Any:
    node: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _where(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _schema_error(document: Any, schema: Mapping) -> ValueError | None:
    """The most relevant schema violation as one line naming the claim and the field."""
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(document))
    # A claim's id names it in every other message: a bad id is reported first.
    bad_ids = [e for e in errors if list(e.absolute_path)[2:] == ["id"]]
    error = bad_ids[0] if bad_ids else jsonschema.exceptions.best_match(errors)
    if error is None:
        return None
    path = list(error.absolute_path)
    if len(path) < 2 or path[0] != "claims":
        return ValueError(f"claims file: {_where(path) or 'top level'}: {error.message}")
    raw = document["claims"][path[1]]
    cid = raw.get("id") if isinstance(raw, Mapping) else None
    inner = path[2:]
    named = isinstance(cid, str) and inner != ["id"]
    who = f"claim {cid}" if named else f"claim #{path[1] + 1}"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        inner = [*inner, extra[0] if extra else "?"]
        problem = "unknown field"
    elif error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        inner = [*inner, missing[0] if missing else "?"]
        problem = "is required"
    elif inner == ["id"]:
        problem = f"must look like 'C3', got {error.instance!r}"
    else:
        problem = error.message
    comment = _comment(schema, error.absolute_schema_path)
    if comment:  # a rule across fields of a check: "<field>: <rule>"
        name, rule = comment.split(": ", 1)
        inner, problem = [*inner[:2], name], f"{rule} ({problem})"
    return ValueError(f"{who}: field '{_where(inner) or 'claim'}': {problem}")


def _infer_statistic(raw: Mapping) -> str:
    if raw["metric"] == "epochs_to_threshold":
        return "time_to_threshold"
    if "success_at" in raw or "exceeds" in raw or raw["metric"] in BOOLEAN_METRICS:
        return "rate"
    return "mean"


def _check(cid: str, i: int, raw: Mapping, claim: Mapping, defaults: Mapping) -> Check:
    statistic = raw.get("statistic") or _infer_statistic(raw)
    task = raw.get("task", claim.get("task"))
    if statistic != "benchmark" and task is None:
        raise ValueError(f"claim {cid}: field 'checks[{i}].task': a run-based check needs one")
    if statistic in ("mean", "lr_worst_case") and raw["metric"] in SKEWED_METRICS:
        raise ValueError(
            f"claim {cid}: field 'checks[{i}].metric': the mean of {raw['metric']!r} is too "
            "skewed across seeds to test (docs/statistics.md, the shape gate): compare its log "
            "(test_loss for a perplexity) or a rate (exceeds)"
        )
    arms = {role: raw.get(role, defaults.get(role, arm)) for role, arm in _DEFAULT_ARMS.items()}
    lower = raw.get("lower_is_better", raw["metric"] in LOWER_IS_BETTER or "exceeds" in raw)
    default_name = f"{arms['treatment']} {raw['comparison']} {arms['baseline']} on {raw['metric']}"
    return Check(
        name=str(raw.get("name") or default_name),
        task=task,
        metric=raw["metric"],
        statistic=statistic,
        comparison=raw["comparison"],
        treatment=arms["treatment"],
        baseline=arms["baseline"],
        filters={**claim.get("filters", {}), **raw.get("filters", {})},
        treatment_filters=dict(raw.get("treatment_filters", {})),
        baseline_filters=dict(raw.get("baseline_filters", {})),
        margin=float(raw.get("margin", 0.0)),
        min_effect=float(raw.get("min_effect", 0.0)),
        lower_is_better=bool(lower),
        threshold=raw.get("threshold"),
        success_at=raw.get("success_at"),
        exceeds=raw.get("exceeds"),
        select_lr=raw.get("select_lr"),
        decide_by=str(raw.get("decide_by", "mean_difference")),
        value=raw.get("value"),
        unit=str(raw.get("unit", "")),
        paper=dict(raw.get("paper", {})),
        paper_setup=dict(raw.get("paper_setup", claim.get("paper_setup", {}))),
    )


def parse_claims(document: Any) -> list[Claim]:
    """Validate a claims document (the parsed YAML) into :class:`Claim` objects.

    Raises:
        ValueError: one line naming the claim id and the offending field.
    """
    schema = _schema()
    error = _schema_error(document, schema)
    if error is not None:
        raise error
    defaults = document.get("defaults", {})
    claims: list[Claim] = []
    for raw in document["claims"]:
        cid = raw["id"]
        if any(c.id == cid for c in claims):
            raise ValueError(f"claim {cid}: field 'id': duplicate id")
        checks = tuple(_check(cid, i, c, raw, defaults) for i, c in enumerate(raw["checks"]))
        min_seeds = raw.get("min_seeds", defaults.get("min_seeds", 5))
        ladder = bool(raw.get("ladder", False))
        claims.append(Claim(cid, raw["title"], raw["source"], checks, min_seeds, ladder))
    return claims


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """Read and validate a claims file (default: the packaged ``claims.yaml``).

    Raises:
        ValueError: naming the claim id and the offending field.
    """
    if path is None:
        text = resources.files("dashboards").joinpath("claims.yaml").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"claims file is not valid YAML: {err}") from err
    return parse_claims(document)
