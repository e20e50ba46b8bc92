"""``hdetach-study``: one command for the whole path, each subcommand the step's own CLI.

    hdetach-study run --task pmnist ...        the study (same as ``python study/run.py``)
    hdetach-study report --experiment NAME     export from MLflow, judge the claims, HTML
    hdetach-study nightly --config FILE        fresh seeds every night, then the report
    hdetach-study plan --experiment PILOT      seeds (and hours) a study needs, from a pilot
    hdetach-study train --task copying ...     one training run (``python -m trainables.train``)

It sits above the study and the report (the top layer). Each command's module is imported
only when asked for, so ``hdetach-study train`` never loads Ray or MLflow.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def _run() -> Callable[[list[str]], int]:
    from study.run import main

    return main


def _report() -> Callable[[list[str]], int]:
    from dashboards.cli import main

    return main


def _nightly() -> Callable[[list[str]], int]:
    from hdetach.nightly import main

    return main


def _train() -> Callable[[list[str]], int]:
    from trainables.train import main

    return main


def _plan() -> Callable[[list[str]], int]:
    from study.plan import main

    return main


COMMANDS = {"run": _run, "report": _report, "nightly": _nightly, "train": _train, "plan": _plan}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "a command is required"
        print(f"hdetach-study: error: {what} (one of {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]]()(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
