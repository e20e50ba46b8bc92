"""The shape gate's ledger: each sequential look's pool, kept on disk as it is first used.

The searcher gates a look of a configuration with the pooled skewness of every configuration
it holds at that moment (``pairedstats.shape``), and records that pool with the
configuration, so analysing the look again gates it the same. Tune saves the searcher's state
only every few seconds, though, while the look's decision reaches MLflow at once: a driver
killed in between would resume from a state without that pool, and could pool differently
(other configurations' seeds may have finished meanwhile) and log another decision. So the
pool is also appended here, one JSON line per (configuration, look), and synced to disk
before the decision it gates is taken; a resumed searcher reads the ledger first.

The file lives beside the Optuna journal (``study.search_setup.shape_ledger``), so it moves
with it on a ``--resume`` from elsewhere. A line cut short by a kill is skipped: the look it
would record was never decided on.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from pairedstats.shape import Shape


class ShapeLedger:
    """Recorded pools by (configuration id, 0-based look); ``path`` None keeps them in memory
    only."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.pools: dict[tuple[str, int], Shape] = {}
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    e = json.loads(line)
                    gamma = math.nan if e["gamma"] is None else float(e["gamma"])
                    key, pool = (
                        (str(e["config"]), int(e["look"])),
                        Shape(gamma, int(e["values"]), int(e["groups"])),
                    )
                except (ValueError, KeyError, TypeError):
                    continue
                self.pools.setdefault(key, pool)  # the first record of a look stands

    def get(self, config: str, look: int) -> Shape | None:
        return self.pools.get((config, look))

    def record(self, config: str, look: int, pool: Shape) -> None:
        """Keep ``pool`` for the look, on disk (synced) before the caller decides with it."""
        self.pools.setdefault((config, look), pool)
        if self.path is None:
            return
        gamma = None if math.isnan(pool.gamma) else pool.gamma
        line = {"config": config, "look": look, "gamma": gamma, "values": pool.values,
                "groups": pool.groups}  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut = self.path.is_file() and self.path.stat().st_size > 0 and not self._ends_a_line()
        with self.path.open("a") as f:
            f.write(("\n" if cut else "") + json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _ends_a_line(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
