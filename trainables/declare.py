"""Options declared once: each option is a dataclass field whose ``option(...)`` carries its
default, bounds, choices and help text; the validator (a pydantic model), the loader's
checks and the argparse flags are all generated from that one declaration.

The configurations stay plain dataclasses (``dataclasses.replace`` and ``asdict`` keep
working, construction checks nothing); ``check`` validates one at the edge through a pydantic
model built from the declarations, in strict mode (an integer option refuses ``3.0``, ``True``
and ``"3"``), and turns pydantic's first error into one line naming the option and the value,
worded as the option declares (``lr must be > 0, got -1``). The checked values are never
replaced by pydantic's conversions: numbers stay exactly as given.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import annotated_types
import pydantic
from pydantic import Strict


@dataclass(frozen=True)
class Option:
    """How one option is checked and offered on the command line.

    ``ge``/``gt`` and the float ``le``/``lt`` bound the value (for a list or tuple: each item,
    named ``item`` in messages); ``cap`` is an upper bound with its own message (``must be <=
    1,000``): a limit past any real run rather than a rule of the option. ``rule`` replaces
    the derived wording, ``message`` the whole line (``{value!r}`` is the value). ``tasks``
    names the tasks that read the option: any other task refuses a value other than the
    default. ``flag`` is the command-line flag (default ``--name-with-dashes``; None: none).
    """

    help: str | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    cap: float | None = None
    choices: tuple | None = None
    rule: str | None = None
    message: str | None = None
    item: str | None = None
    tasks: tuple[str, ...] | None = None
    flag: str | None = ""


def option(default: Any = dataclasses.MISSING, *, factory: Callable | None = None, **spec):
    """A dataclass field declaring an option (``Option``'s keywords)."""
    meta = {"option": Option(**spec)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def spec_of(field: dataclasses.Field) -> Option:
    return field.metadata.get("option", Option())


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# -- validation ------------------------------------------------------------------------------


def _fmt(number: float, grouped: bool) -> str:
    return f"{int(number):,}" if grouped else f"{number:g}"


def rule_of(spec: Option, integer: bool) -> str:
    """The option's rule as its messages word it (``must be in [0, 1]``)."""
    if spec.rule:
        return spec.rule
    if spec.choices is not None:
        return f"must be one of {', '.join(map(str, spec.choices))}"
    if integer:
        return f"must be an integer >= {_fmt(spec.ge or 0, False)}"
    low = (f"[{spec.ge:g}", f">= {spec.ge:g}") if spec.ge is not None else None
    if spec.gt is not None:
        low = (f"({spec.gt:g}", f"> {spec.gt:g}")
    high = f"{spec.le:g}]" if spec.le is not None else None
    if spec.lt is not None:
        high = f"{spec.lt:g})"
    if low and high:
        return f"must be in {low[0]}, {high}"
    return f"must be {low[1]}" if low else "must be a number"


def _core(hint: Any) -> tuple[Any, bool]:
    """The scalar type inside ``X | None``, ``tuple[X, ...]``, ``list[X]``; and whether the
    option is a collection."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _core(rest[0]) if len(rest) == 1 else (rest[0], False)
    if origin in (tuple, list):
        return args[0], True
    return hint, False


def _checked(t: Any, spec: Option) -> Any:
    """The pydantic type of one scalar value under ``spec``."""
    if spec.choices is not None:
        return Literal[spec.choices]
    if t not in (int, float, bool, str):
        return t
    meta: list[Any] = [Strict()]
    if t is float:
        meta.append(pydantic.AllowInfNan(False))
    for name in ("ge", "gt", "le", "lt"):
        bound = getattr(spec, name)
        if bound is not None and t in (int, float) and not (t is int and name in ("le", "lt")):
            meta.append(getattr(annotated_types, name.capitalize())(bound))
    if spec.cap is not None:
        meta.append(annotated_types.Le(spec.cap))
    return Annotated[(t, *meta)]


def _annotation(hint: Any, spec: Option) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        parts = tuple(_annotation(a, spec) if a is not type(None) else a for a in args)
        return Union[parts]  # noqa: UP007 (built at run time)
    if origin is tuple:
        return tuple[_checked(args[0], spec), ...]
    if origin is list:
        return list[_checked(args[0], spec)]
    if origin is dict:
        return dict[args[0], _checked(args[1], Option())]
    if origin is Literal:
        return hint
    return _checked(hint, spec)


@functools.cache
def validator(cls: type) -> type[pydantic.BaseModel]:
    """The pydantic model checking every declared option of ``cls``."""
    fields = {
        f.name: (_annotation(hints(cls)[f.name], spec_of(f)), ...) for f in dataclasses.fields(cls)
    }
    return pydantic.create_model(f"{cls.__name__}Check", **fields)


def _line(cls: type, error: dict) -> str:
    name = error["loc"][0]
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    spec = spec_of(field)
    t, collection = _core(hints(cls)[name])
    at_item = collection and len(error["loc"]) > 1 and isinstance(error["loc"][1], int)
    label = spec.item if at_item and spec.item else name
    value = error["input"]
    if spec.message:
        return spec.message.format(value=value)
    if error["type"] in ("less_than_equal", "less_than") and spec.cap is not None:
        return f"{label} must be <= {_fmt(spec.cap, t is int)}, got {value!r}"
    return f"{label} {rule_of(spec, t is int and spec.choices is None)}, got {value!r}"


def check(obj: Any, error: type[Exception]) -> None:
    """Check every option of the dataclass ``obj``; raise ``error`` (one line) at the first
    bad one. A ``task`` field makes options declared for other tasks keep their default."""
    cls = type(obj)
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}
    try:
        validator(cls).model_validate(values)
    except pydantic.ValidationError as err:
        raise error(_line(cls, err.errors()[0])) from None
    task = values.get("task")
    for f in dataclasses.fields(cls):
        tasks = spec_of(f).tasks
        if tasks and task not in tasks and values[f.name] != default_of(f):
            raise error(
                f"{f.name} is not used by task {task!r} (only by {', '.join(tasks)}), "
                f"got {values[f.name]!r}"
            )


def unknown_key(cls: type, data: Any) -> str | None:
    """The first key of ``data`` that names no option of ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    return unknown[0] if unknown else None


def is_list(cls: type, name: str) -> bool:
    """Whether the option is a list or tuple (a comma-separated string on the command line)."""
    return _core(hints(cls)[name])[1]


# -- command line ------------------------------------------------------------------------------


def flag_of(field: dataclasses.Field) -> str | None:
    flag = spec_of(field).flag
    return None if flag is None else (flag or "--" + field.name.replace("_", "-"))


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per option of ``cls`` (not in ``skip``, with a flag): a switch for a boolean
    (``None`` when absent, so the configuration's default stands), choices for a choice, a
    comma-separated string for a list (``split_list`` converts it), the scalar type otherwise.
    Every flag defaults to None: what is not given is left to the file, preset or default."""
    for f in dataclasses.fields(cls):
        flag = flag_of(f)
        if flag is None or f.name in skip:
            continue
        spec = spec_of(f)
        t, collection = _core(hints(cls)[f.name])
        kwargs: dict[str, Any] = {"dest": f.name, "help": spec.help}
        if t is bool and not collection:
            kwargs.update(action="store_true", default=None)
        elif collection:
            kwargs["metavar"] = "A,B,..."
        elif spec.choices is not None:
            kwargs.update(choices=spec.choices, type=type(spec.choices[0]))
        elif t in (int, float):
            kwargs["type"] = t
        parser.add_argument(flag, **kwargs)


_BOOLS = {"true": True, "false": False, "on": True, "off": False, "1": True, "0": False}


def split_list(cls: type, name: str, text: str, error: type[Exception]) -> list:
    """A comma-separated command-line list as the option's item type."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    t, _ = _core(hints(cls)[name])
    flag = flag_of(field)
    if t is bool:
        out = []
        for part in text.split(","):
            if part.strip().lower() not in _BOOLS:
                raise error(f"{flag} must be true/false, got {part.strip()!r}")
            out.append(_BOOLS[part.strip().lower()])
        return out
    try:
        return [t(v) for v in text.split(",") if v.strip()]
    except ValueError:
        kind = "numbers" if t is float else "integers"
        raise error(f"{flag} must be comma-separated {kind}, got {text!r}") from None
