"""The docs stay true: every measured figure a page quotes is held by a results file, and no
results file is older than the code it measures.

The rules, stated once here and in docs/development.md ("Figures come from results files"):

*Results files.* Every file under ``benchmarks/results/`` (but ``sources.json``) has an entry in
``benchmarks/results/sources.json`` naming the code it measures (``measures``: repository
paths) and, unless the file records them itself (``machine`` with ``date`` and ``command``),
its provenance (``provenance``: machine, date, command).

*Stale results.* A results file is stale when a commit that changes one of the paths it
measures comes after the commit that last wrote the results file (``git log C..HEAD --
<measures>``), unless the entry lists that commit under ``reviewed_changes`` with the reason
it cannot move the figures. A results file not committed yet counts as written at HEAD.

*Measured figures.* Pages (``docs/**/*.md`` and ``README.md``) are split into blocks at blank
lines, fenced code left out. A block is *measured* when it says "measured" or names a results
file (``benchmarks/results/NAME``); a table is measured when it, or the block just before
it, is. A measured block must name a results file, and each figure in it must be a value of
a named file at the precision quoted: a number with a unit (``us ms s min h % points x GiB GB MB``,
seconds and fractions converted) or, in a table's body, any number with a decimal point.
Numbers inside inline code, dates, versions and confidence levels ("95% interval") are not
figures. A value is found anywhere in
the file's JSON (numbers, and numbers written inside strings).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MANIFEST = RESULTS / "sources.json"

CITE = re.compile(r"benchmarks/results/([\w.\-]+\.json)")
MEASURED = re.compile(r"\bmeasured\b", re.IGNORECASE)
# A number, then a unit; "4x4" (a shape) and "x 250" (a product) are not ratios.
FIGURE = re.compile(
    r"(?<![\w.\-/=])(-?\d[\d,]*(?:\.\d+)?)"
    r"(?:\s?(us|µs|ms|s|min|h|%|points|GiB|GB|MB)|(x|×))(?![\w\d])"
)
DECIMAL = re.compile(r"(?<![\w.\-/=])(\d+\.\d+)(?![\w.\d])")
INLINE_CODE = re.compile(r"`[^`]*`")
# Dates, versions and confidence levels ("95% interval") are settings, not measurements.
NOT_FIGURES = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T[\d:+]+)?|\bv?\d+\.\d+\.\d+\S*"
    r"|\b\d+% (?:CI|confidence|interval|band|t-interval)"
)
LINK_TARGET = re.compile(r"\]\([^)]*\)")
HEADER_UNIT = re.compile(r"(?<![\w])(us|µs|ms|s|min|%)(?![\w])")
# What a figure with this unit may be in a results file: seconds, fractions or itself.
SCALES = {"us": (1e6, 1), "µs": (1e6, 1), "ms": (1e3, 1), "min": (1 / 60, 1), "h": (1 / 3600, 1)}
SCALES |= {"%": (100, 1), "points": (100, 1)}  # percentage points, as a difference


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(text: str) -> list[str]:
    """A page's blocks (paragraphs, lists, tables), fenced code left out."""
    out, current, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.strip():
            current.append(line)
        elif current:
            out.append("\n".join(current))
            current = []
    if current:
        out.append("\n".join(current))
    return out


def is_table(block: str) -> bool:
    return all(line.lstrip().startswith("|") for line in block.splitlines())


def figures(block: str) -> list[tuple[str, str]]:
    """(number, unit) pairs a block quotes as figures. In a table's body a bare decimal takes
    the unit its column's header names ("ms per seed"), else none."""
    text = NOT_FIGURES.sub(" ", LINK_TARGET.sub("]", INLINE_CODE.sub(" ", block)))
    if not is_table(block):
        return [(n, u or x) for n, u, x in FIGURE.findall(text)]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()]
    units = [next(iter(HEADER_UNIT.findall(cell)), "") for cell in rows[0]]
    found = []
    for row in rows[2:]:  # the header and rule rows name, they do not measure
        for column, cell in enumerate(row):
            with_unit = {m.start(1) for m in FIGURE.finditer(cell)}
            found += [(n, u or x) for n, u, x in FIGURE.findall(cell)]
            unit = units[column] if column < len(units) else ""
            bare = [m.group(1) for m in DECIMAL.finditer(cell) if m.start(1) not in with_unit]
            found += [(n, unit) for n in bare]
    return found


def measured_blocks(text: str) -> list[tuple[str, set[str]]]:
    """Each measured block with the results files it may draw its figures from."""
    bs = blocks(text)
    out = []
    for i, block in enumerate(bs):
        cited = set(CITE.findall(block))
        own = bool(MEASURED.search(block)) or bool(cited)
        before = i > 0 and (MEASURED.search(bs[i - 1]) or CITE.search(bs[i - 1]))
        if own or (is_table(block) and before):
            if is_table(block) and before:
                cited |= set(CITE.findall(bs[i - 1]))
            out.append((block, cited))
    return out


def _numbers(node, out: list[float]) -> list[float]:
    if isinstance(node, bool):
        return out
    if isinstance(node, int | float):
        if math.isfinite(node):
            out.append(float(node))
    elif isinstance(node, str):
        out += [float(s.replace(",", "")) for s in re.findall(r"-?\d[\d,]*(?:\.\d+)?", node)]
    elif isinstance(node, dict):
        for key, value in node.items():
            _numbers(key, out)
            _numbers(value, out)
    elif isinstance(node, list):
        for value in node:
            _numbers(value, out)
    return out


@cache
def values(name: str) -> tuple[float, ...]:
    text = (RESULTS / name).read_text()
    # Python's json writes NaN for missing values; they hold no figure.
    return tuple(_numbers(json.loads(text), []))


def held(number: str, unit: str, names: set[str]) -> bool:
    """Whether a results file holds `number` (as quoted, at its precision) in `unit`."""
    target = abs(float(number.replace(",", "")))  # the sign is the sentence's to say
    decimals = len(number.split(".")[1]) if "." in number else 0
    scales = SCALES.get(unit, (1,))
    for name in names:
        for v in values(name):
            for scale in scales:
                # Half a unit in the last quoted place, either way: a quote rounds half up.
                if abs(abs(v) * scale - target) <= 0.5 * 10**-decimals * (1 + 1e-9):
                    return True
    return False


def check_page(text: str) -> list[str]:
    """What is wrong with one page's figures, one line per problem."""
    problems = []
    for block, cited in measured_blocks(text):
        first = block.strip().splitlines()[0][:70]
        missing = sorted(n for n in cited if not (RESULTS / n).is_file())
        if missing:
            problems.append(f"cites results files that do not exist: {missing} in {first!r}")
            continue
        if not cited:
            if figures(block):
                problems.append(f"measured figures but no results file named: {first!r}")
            continue
        for number, unit in figures(block):
            if not held(number, unit, cited):
                problems.append(f"{number}{unit} is in no results file of {sorted(cited)}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_measured_figure_is_held_by_a_results_file(page: Path) -> None:
    problems = check_page(page.read_text())
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_a_hand_typed_or_stale_figure_is_caught() -> None:
    name = next(p.name for p in sorted(RESULTS.glob("*.json")) if p != MANIFEST)
    v = next(x for x in values(name) if x > 1 and x != int(x))
    cite = f"(`benchmarks/results/{name}`)"
    assert check_page(f"Measured {cite}: {v:.2f} s a step.") == []
    assert check_page(f"Measured {cite}: {v * 1.37:.2f} s a step.")
    assert check_page(f"Measured on the laptop: {v:.2f} s a step.")  # no file named
    table = f"| case | s |\n| --- | --- |\n| a | {v * 1.37:.3f} |"
    assert check_page(f"Measured {cite}:\n\n{table}")


def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def test_every_results_file_says_what_it_measures_and_where_it_comes_from() -> None:
    entries = manifest()
    files = {p.name for p in RESULTS.iterdir() if p != MANIFEST}
    assert files == set(entries), "sources.json and benchmarks/results/ disagree"
    for name, entry in entries.items():
        assert entry["measures"], f"{name}: measures nothing"
        for path in entry["measures"]:
            assert (ROOT / path).exists(), f"{name}: measures {path}, which does not exist"
        own = json.loads((RESULTS / name).read_text()).get("machine")
        records_itself = isinstance(own, dict) and {"date", "command"} <= set(own)
        if records_itself:
            assert "provenance" not in entry, f"{name} records its provenance itself"
        else:
            assert {"machine", "date", "command"} <= set(entry.get("provenance", {})), name


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def stale_commits(name: str, entry: dict) -> list[str]:
    """Commits after the results file's last write that change what it measures, unreviewed."""
    written = _git("log", "-1", "--format=%H", "--", f"benchmarks/results/{name}") or "HEAD"
    later = _git("log", "--format=%h %s", f"{written}..HEAD", "--", *entry["measures"])
    reviewed = entry.get("reviewed_changes", {})
    return [
        line[:100]
        for line in later.splitlines()
        if not any(line.startswith(c[:7]) for c in reviewed)
    ]


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git history")
@pytest.mark.parametrize("name", sorted(manifest()) if MANIFEST.exists() else [])
def test_no_results_file_is_older_than_the_code_it_measures(name: str) -> None:
    stale = stale_commits(name, manifest()[name])
    assert not stale, (
        f"benchmarks/results/{name} predates changes to the code it measures: rerun its command, "
        "or list each commit under reviewed_changes in sources.json with why it cannot move "
        "the figures:\n" + "\n".join(stale)
    )


def test_every_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs").rglob("*.md")):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert rel in nav, f"docs/{rel} is not in mkdocs.yml's nav"


def test_the_readmes_links_reach_files() -> None:
    """The README is read on the forge, outside the site, so mkdocs --strict does not see it."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links into the docs"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_fence_opens_an_empty_block(page: Path) -> None:
    """An empty fenced block is a fence doubled by a move, which shows the code as prose."""
    doubled = re.findall(r"^```\w*\n```", page.read_text(), flags=re.MULTILINE)
    assert not doubled, f"{page.relative_to(ROOT)}: a code fence opens an empty block"
