"""``hdetach-study``: one command for the whole path, each subcommand the step's own CLI.

    hdetach-study run --task pmnist ...        the study (same as ``python study/run.py``)
    hdetach-study report --experiment NAME     export from MLflow, judge the claims, HTML
    hdetach-study nightly --config FILE        fresh seeds every night, then the report
    hdetach-study plan --experiment PILOT      seeds (and hours) a study needs, from a pilot
    hdetach-study train --task copying ...     one training run (``python -m trainables.train``)

The one place in ``study`` that reaches into ``dashboards``: the report and nightly commands
are imported only when asked for.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "run": "study.run",
    "report": "dashboards.cli",
    "nightly": "dashboards.nightly",
    "train": "trainables.train",
    "plan": "study.plan",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "a command is required"
        print(f"hdetach-study: error: {what} (one of {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    from importlib import import_module

    return import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
