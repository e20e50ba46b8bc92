"""One training run from the command line, and the trainer of each task.

    python -m trainables.train --task copying --preset smoke --p-detach 0.5 --seed 3

``trainer_for`` picks the task's trainer: ``trainables.trainer.Trainer`` (the loop, for the
sequence classifications), ``LanguageModelTrainer`` or ``CaptioningTrainer`` (subclasses in
their own modules). This module sits above all three, so none of them imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from trainables.captioning import CaptioningTrainer
from trainables.config import PRESETS, ConfigError, OneLineParser, RunConfig, preset_table
from trainables.contract import TASKS
from trainables.declare import add_flags, split_list
from trainables.language_model import LanguageModelTrainer
from trainables.runtime import keep_freed_memory
from trainables.seeds import stream_seeds
from trainables.trainer import Trainer


def trainer_class(task: str) -> type[Trainer]:
    """The trainer of a task: sequence classification (copying, MNIST), the language model
    or captioning (each class also loads its own data: ``load_data``)."""
    if task == "language_model":
        return LanguageModelTrainer
    if task == "captioning":
        return CaptioningTrainer
    return Trainer


def trainer_for(cfg: RunConfig, data=None, *, progress: bool = False) -> Trainer:
    """A trainer for the configuration's task."""
    return trainer_class(cfg.task)(cfg, data, progress=progress)


def load_task_for(cfg: RunConfig):
    """The task's data as the configuration describes it."""
    return trainer_class(cfg.task).load_data(cfg)


def format_epoch(records: list[dict | None], seeds: tuple[int, ...]) -> str:
    """One line per epoch for a person: mean over members (and the range when K > 1)."""
    live = [r for r in records if r is not None]
    if not live:
        return "all members diverged"
    epoch = live[0]["epoch"]
    acc = [r["val_acc"] for r in live]
    mean = lambda key: sum(r[key] for r in live) / len(live)  # noqa: E731
    parts = [
        f"epoch {epoch:4d}",
        f"train_loss {mean('train_loss'):.4f}",
        f"val_loss {mean('val_loss'):.4f}",
        f"val_acc {100 * sum(acc) / len(acc):6.2f}%",
    ]
    if len(live) > 1:
        parts.append(f"[{100 * min(acc):.2f}..{100 * max(acc):.2f}]")
    parts += [f"grad {mean('grad_norm'):.3g} (max {max(r['grad_norm_max'] for r in live):.3g})"]
    parts += [f"detached {mean('detached_fraction'):.2f}", f"{live[0]['epoch_seconds']:.1f}s"]
    diverged = [str(s) for s, r in zip(seeds, records, strict=True) if r and r.get("diverged")]
    if diverged:
        parts.append(f"DIVERGED seed {','.join(diverged)}")
    return "  ".join(parts)


# -- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    presets = preset_table()
    epilog = "presets (task: preset -> epochs, hidden, lr, batch):\n" + "\n".join(
        f"  {task}: {name} -> {v['epochs']} epochs, H={v['hidden_size']}, lr={v['lr']}, "
        f"batch {v['batch_size']}"
        for task, p in presets.items()
        for name, v in p.items()
    )
    p = OneLineParser(
        prog="python -m trainables.train",
        description="Train one configuration of the h-detach study on K seeds.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=TASKS, help="the paper's task")
    p.add_argument("--preset", default=RunConfig.preset, choices=PRESETS)
    p.add_argument("--seed", type=int, help="run seed (default 0)")
    p.add_argument("--seeds", help="comma-separated seeds trained together as members")
    p.add_argument("--no-clip", action="store_true", help="train without gradient clipping")
    add_flags(p, RunConfig)  # every other run option, as RunConfig declares it
    p.add_argument("--checkpoint", type=Path, help="write a checkpoint here after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--json", type=Path, help="write histories and final metrics here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    # The run options' flags store under the option's name; None: not given.
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if getattr(args, f.name, None) is not None and f.name not in ("task", "preset", "seeds")
    }
    if isinstance(overrides.get("transfer_delays"), str):
        delays = split_list(RunConfig, "transfer_delays", args.transfer_delays, ConfigError)
        overrides["transfer_delays"] = tuple(delays)
    if args.no_clip:
        overrides["clip"] = False
    if args.seeds is not None:
        try:
            overrides["seeds"] = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise ConfigError(
                f"--seeds must be comma-separated integers, got {args.seeds!r}"
            ) from None
    elif args.seed is not None:
        overrides["seeds"] = (args.seed,)
    return RunConfig.from_preset(args.task, args.preset, **overrides)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.resume and (args.checkpoint is None or not args.checkpoint.exists()):
            raise ConfigError(f"--resume needs an existing --checkpoint, got {args.checkpoint}")
        keep_freed_memory()
        trainer = trainer_for(cfg, progress=not args.quiet)
        if args.resume:
            trainer.load(args.checkpoint)
    except ValueError as err:  # ConfigError, DataNotFoundError, bad checkpoint: user-fixable
        parser.exit(2, f"{parser.prog}: error: {err}\n")

    print(
        f"{cfg.task} ({cfg.preset}): arm {cfg.arm}, p_detach={cfg.p_detach}, lr={cfg.lr}, "
        f"clip={f'{cfg.clip_norm:g}' if cfg.clip else 'off'}, seeds {list(cfg.seeds)}, "
        f"{trainer.device}, starting at epoch {trainer.epoch + 1}/{cfg.epochs}",
        flush=True,
    )

    def on_epoch(t: Trainer, records: list) -> None:
        if args.checkpoint is not None:  # before the line: a printed epoch is a saved epoch
            t.save(args.checkpoint)
        print(format_epoch(records, cfg.seeds), flush=True)

    trainer.run(on_epoch)
    finals = trainer.finish()
    for f in finals:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()}
        print("final", json.dumps(shown), flush=True)
    if args.json is not None:
        payload = {
            "config": cfg.to_dict(),
            "streams": {str(s): stream_seeds(s) for s in cfg.seeds},
            "history": trainer.history,
            "final": finals,
        }
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
