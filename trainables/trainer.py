"""The training loop: one readable loop for every task, K seeds at once, resumable bit for bit.

A run trains K >= 1 seed members together (``RunConfig.seeds``); each member has its own
initialisation, data order and detach masks (``trainables/seeds.py``), its own gradient
clipping and its own metrics, and computes exactly what it would compute alone. K = 1 is the
ordinary run. Per epoch and member: train loss, validation loss and accuracy, gradient norm
before clipping (mean and max over the epoch), fraction of steps detached, seconds per epoch.
A member whose loss or gradient turns non-finite is marked diverged at that epoch and stops
recording (a result, not a crash); the run ends when every member has diverged.

After training, ``finish()`` evaluates each member's best-validation weights: test accuracy
for MNIST tasks, transfer-copying accuracies at the longer delays for copying.

``state_dict()`` holds everything the next epoch depends on (weights, optimizer, every RNG
state, histories), so a run restored from an epoch checkpoint continues exactly as if it had
never stopped (bitwise on CPU; only the wall-clock ``epoch_seconds`` differ).

The loop, its metrics, evaluation and checkpoints read top to bottom in this one file
(nanoGPT's rule); the language model and captioning subclass ``Trainer`` in their own modules,
and ``trainables/train.py`` picks the trainer of a task and is the command line.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.config import (
    ConfigError,
    RunConfig,
)
from trainables.contract import epochs_to_threshold, transfer_metric
from trainables.engine import HDetachLSTM
from trainables.members import MemberLinear
from trainables.seeds import stream_generator
from trainables.tasks import load_task
from trainables.tasks.base import Split, TaskData

CHECKPOINT_FORMAT = 2  # 2: per-task modules and the selection score


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def build_member(cfg: RunConfig, input_size: int, num_classes: int, seed: int):
    """One seed's LSTM and output layer, initialised from the seed's ``init`` stream."""
    gen = stream_generator(seed, "init")
    lstm = HDetachLSTM(
        input_size,
        cfg.hidden_size,
        cfg.num_layers,
        p_detach=cfg.p_detach,
        c_detach=cfg.c_detach,
        damp=cfg.damp,
        mask_scope=cfg.mask_scope,
        per_sample=cfg.per_sample_masks,
        backend=cfg.backend,
        precision=cfg.precision,
    )
    lstm.reset_parameters(gen)
    head = nn.Linear(cfg.hidden_size, num_classes)
    bound = 1.0 / math.sqrt(cfg.hidden_size)  # nn.Linear's default distribution, seeded
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.uniform_(-bound, bound, generator=gen)
    return lstm, head


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """Adam (the paper), or the optimizers of seed 004: SGD, momentum SGD, RMSprop."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.RMSprop(params, lr=cfg.lr)


class Trainer:
    """Trains ``len(cfg.seeds)`` seed members of one configuration, epoch by epoch."""

    def __init__(self, cfg: RunConfig, data: TaskData | None = None, *, progress: bool = False):
        self.cfg = cfg.validate()
        self.device = resolve_device(cfg.device)
        self.progress = progress
        if data is None:
            data = self.load_data(cfg)
        self.data = data.to(self.device)
        K = cfg.members
        self.modules = self._build_modules()  # name -> module with a member axis
        for name, module in self.modules.items():
            setattr(self, name, module)
        self.params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = make_optimizer(cfg, self.params)
        self.data_gens = [stream_generator(s, "data") for s in cfg.seeds]
        self.mask_gens = [stream_generator(s, "masks") for s in cfg.seeds]
        self.epoch = 0
        self.history: list[list[dict]] = [[] for _ in range(K)]
        self.diverged_epoch: list[int | None] = [None] * K
        self.best_val_acc = [-math.inf] * K
        self.best_score = [-math.inf] * K  # the task's model-selection value, higher better
        self.best_epoch = [0] * K
        self.best_params = [p.detach().clone() for p in self.params]

    # -- what a task family defines (classification here; text and captions subclass) ----

    #: Per-epoch metrics of the task beyond the contract's EPOCH_METRICS.
    extra_epoch_metrics: tuple[str, ...] = ()

    @staticmethod
    def load_data(cfg: RunConfig) -> TaskData:
        """The task's data as the configuration describes it (copying, MNIST)."""
        if cfg.task == "copying":
            return load_task(
                "copying",
                T=cfg.seq_len,
                train_size=cfg.train_size,
                val_size=cfg.val_size,
                data_seed=cfg.data_seed,
                one_hot=cfg.one_hot,
            )
        return load_task(
            cfg.task,
            data_dir=cfg.data_dir,
            download=cfg.download,
            permutation_seed=cfg.permutation_seed,
            permutation=cfg.permutation,
            run_seeds=cfg.seeds,
            train_size=cfg.train_size,
            val_size=cfg.val_size,
            shuffle_seed=cfg.shuffle_seed,
            test_size=cfg.test_size,
            pool=cfg.pixel_pool,
        )

    def _build_modules(self) -> dict[str, nn.Module]:
        """The model: each seed's LSTM and output layer, stacked as members."""
        data, cfg = self.data, self.cfg
        singles = [build_member(cfg, data.input_size, data.num_classes, s) for s in cfg.seeds]
        return {
            "lstm": HDetachLSTM.from_members([m[0] for m in singles]).to(self.device),
            "head": MemberLinear.from_members([m[1] for m in singles], cfg.backend).to(self.device),
        }

    def _epoch_start(self) -> None:
        """Before an epoch's first minibatch (the language model resets its state)."""

    def _batch_losses(self, idx: Tensor):
        """Mean loss per member ``(K,)`` of one minibatch, and the masks drawn for it."""
        data = self.data
        idx = idx.to(self.device)
        x = data.in_member_order(data.train.x[idx].permute(2, 0, 1, 3))  # -> (T, K, B, I)
        y = data.train.y[idx]
        masks = self.lstm.sample_masks(x.shape[0], x.shape[2], self.mask_gens)
        out, _ = self.lstm(x, masks=masks, output_steps=None if data.loss_every_step else 1)
        return self._member_losses(self.head(out), y), masks

    def _validate(self) -> dict[str, list[float]]:
        """Per member: ``val_loss``, ``val_acc``, the selection ``score`` (higher is better)
        and any ``extra_epoch_metrics``."""
        val_loss, val_acc = self.evaluate(self.data.val)
        return {"val_loss": val_loss, "val_acc": val_acc, "score": val_acc}

    def _final_metrics(self, finals: list[dict]) -> None:
        """Add the task's metrics of the best-validation weights (loaded) to ``finals``."""
        cfg, K = self.cfg, self.cfg.members
        if self.data.test is not None:
            _, test_acc = self.evaluate(self.data.test)
            for k in range(K):
                finals[k]["test_acc_at_best"] = test_acc[k]
        if cfg.task == "copying" and cfg.transfer_delays:
            from trainables.tasks.copying import transfer_sets

            for delay in cfg.transfer_delays:  # one at a time: T=5000 alone is ~300 MB
                (split,) = transfer_sets(
                    (delay,), cfg.transfer_size, seed=cfg.data_seed, one_hot=cfg.one_hot
                ).values()
                _, acc = self.evaluate(split.to(self.device), steps=self.data.acc_steps)
                for k in range(K):
                    finals[k][transfer_metric(delay)] = acc[k]

    # -- one epoch ----------------------------------------------------------------------

    @property
    def active(self) -> list[bool]:
        return [d is None for d in self.diverged_epoch]

    @property
    def done(self) -> bool:
        return self.epoch >= self.cfg.epochs or not any(self.active)

    def _batches(self) -> Iterator[Tensor]:
        """Index tensors ``(K, B)``: each member draws from its own data stream."""
        cfg, n = self.cfg, self.data.train.x.shape[0]
        if self.data.sampling == "with_replacement":
            count = cfg.batches_per_epoch or max(1, n // cfg.batch_size)
            for _ in range(count):
                yield torch.stack(
                    [torch.randint(n, (cfg.batch_size,), generator=g) for g in self.data_gens]
                )
        else:  # a fresh permutation each epoch, as the reference's SubsetRandomSampler
            yield from self._permuted_batches(n)

    def _permuted_batches(self, n: int) -> Iterator[Tensor]:
        """``(K, B)`` indices into ``n`` examples: a fresh permutation per member and epoch."""
        cfg = self.cfg
        orders = torch.stack([torch.randperm(n, generator=g) for g in self.data_gens])
        count = cfg.batches_per_epoch or math.ceil(n / cfg.batch_size)
        for b in range(count):
            chunk = orders[:, b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if chunk.shape[1] == 0:
                break
            yield chunk

    def _member_losses(self, logits: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy per member: ``logits (T', K, B, C)``, ``y`` -> ``(K,)``."""
        K = logits.shape[1]
        if self.data.loss_every_step:
            target = y.permute(2, 0, 1)  # (K, B, T) -> (T, K, B)
        else:
            logits, target = logits[-1:], y.unsqueeze(0)  # (1, K, B, C), (1, K, B)
        losses = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
        )
        return losses.view(-1, K, target.shape[-1]).mean(dim=(0, 2))

    def train_epoch(self) -> list[dict | None]:
        """Train one epoch; returns each member's epoch record (``None`` once diverged)."""
        cfg, K = self.cfg, self.cfg.members
        anneal = cfg.anneal_p > 0 and self.epoch > cfg.epochs - cfg.anneal_p
        self.lstm.p_detach = 0.0 if anneal else cfg.p_detach
        start = time.perf_counter()
        zeros = lambda: torch.zeros(K, dtype=torch.float64, device=self.device)  # noqa: E731
        loss_sum, norm_sum, norm_max, detached = zeros(), zeros(), zeros(), zeros()
        steps = 0
        self._epoch_start()
        batches = list(self._batches())
        for batch in _progress(batches, self.progress, f"epoch {self.epoch + 1}/{cfg.epochs}"):
            losses, masks = self._batch_losses(batch)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            norms = self._clip_per_member()
            self.optimizer.step()
            loss_sum += losses.detach()
            norm_sum += norms
            norm_max = torch.maximum(norm_max, norms)
            if masks.h is not None:
                detached += masks.detached_fraction().to(self.device)
            steps += 1
        seconds = time.perf_counter() - start
        val = self._validate()
        val_loss, val_acc, score = val["val_loss"], val["val_acc"], val["score"]
        self.epoch += 1

        records: list[dict | None] = []
        train_loss, grad_mean = (loss_sum / steps).tolist(), (norm_sum / steps).tolist()
        grad_max, det = norm_max.tolist(), (detached / steps).tolist()
        for k in range(K):
            if self.diverged_epoch[k] is not None:
                records.append(None)
                continue
            record = {
                "epoch": self.epoch,
                "train_loss": train_loss[k],
                "val_loss": val_loss[k],
                "val_acc": val_acc[k],
                "grad_norm": grad_mean[k],
                "grad_norm_max": grad_max[k],
                "detached_fraction": det[k],
                "epoch_seconds": seconds,
                "val_score": score[k],
                **{name: val[name][k] for name in self.extra_epoch_metrics},
            }
            finite = all(math.isfinite(record[m]) for m in ("train_loss", "grad_norm_max"))
            if not finite or not math.isfinite(record["val_loss"]):
                self.diverged_epoch[k] = self.epoch
                record["diverged"] = True
            elif score[k] > self.best_score[k] or (
                cfg.select == "last" and score[k] == self.best_score[k]
            ):
                self.best_score[k], self.best_epoch[k] = score[k], self.epoch
                self.best_val_acc[k] = val_acc[k]
                for best, p in zip(self.best_params, self.params, strict=True):
                    best[k].copy_(p.detach()[k])
            self.history[k].append(record)
            records.append(record)
        return records

    def _clip_per_member(self) -> Tensor:
        """Gradient-norm clipping per member (``clip_grad_norm_``'s rule); returns the
        pre-clipping norms ``(K,)``."""
        grads = [p.grad for p in self.params if p.grad is not None]
        K = self.cfg.members
        sq = torch.stack([g.reshape(K, -1).double().pow(2).sum(1) for g in grads]).sum(0)
        norms = sq.sqrt()
        if self.cfg.clip:
            coef = (self.cfg.clip_norm / (norms + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(coef.to(g.dtype).view(K, *([1] * (g.dim() - 1))))
        return norms

    @torch.no_grad()
    def evaluate(self, split: Split, steps: int | None = None) -> tuple[list, list]:
        """Mean loss and accuracy per member over a whole split.

        Accuracy is over the last ``acc_steps`` steps (copying: the 10 recalled symbols;
        MNIST: the label at the last step). With ``steps``, only the last ``steps`` outputs
        are computed and the loss is taken over them (transfer copying at long delays)."""
        data, K = self.data, self.cfg.members
        n = split.x.shape[0]
        chunk = max(1, self.cfg.eval_batch_size // K)
        loss_sum = torch.zeros(K, dtype=torch.float64, device=self.device)
        correct = torch.zeros(K, dtype=torch.float64, device=self.device)
        keep = steps if steps is not None else (None if data.loss_every_step else 1)
        for lo in range(0, n, chunk):
            x = split.x[lo : lo + chunk].transpose(0, 1)  # (T, b, I)
            y = split.y[lo : lo + chunk]
            b = x.shape[1]
            x = data.in_member_order(x.unsqueeze(1).expand(-1, K, -1, -1))
            out, _ = self.lstm(x, output_steps=keep)
            logits = self.head(out)  # (T', K, b, C)
            preds = logits[-data.acc_steps :].argmax(-1)  # (acc_steps, K, b)
            if data.loss_every_step:
                target = y.t()[-logits.shape[0] :]  # (T', b)
                acc_target = y.t()[-data.acc_steps :]
            else:
                target, acc_target = y.unsqueeze(0), y.unsqueeze(0)
            ce = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                target.unsqueeze(1).expand(-1, K, -1).reshape(-1),
                reduction="none",
            )
            loss_sum += ce.view(logits.shape[0], K, b).double().mean(0).sum(1)
            correct += (preds == acc_target.unsqueeze(1)).double().mean(0).sum(1)
        return (loss_sum / n).tolist(), (correct / n).tolist()

    def run(self, on_epoch: Callable[[Trainer, list], None] | None = None) -> Trainer:
        """Train to the end (or until every member diverged), calling ``on_epoch`` after
        each epoch (checkpointing, reporting, printing)."""
        while not self.done:
            records = self.train_epoch()
            if on_epoch is not None:
                on_epoch(self, records)
        return self

    # -- results --------------------------------------------------------------------------

    def finish(self) -> list[dict]:
        """Final metrics per member, from its best-validation weights."""
        K = self.cfg.members
        finals = [self.summary(k) for k in range(K)]
        if not any(f["last_epoch"] > 0 for f in finals):
            return finals
        current = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, best in zip(self.params, self.best_params, strict=True):
                p.copy_(best)
        try:
            self._final_metrics(finals)
        finally:
            with torch.no_grad():
                for p, saved in zip(self.params, current, strict=True):
                    p.copy_(saved)
        return finals

    def summary(self, k: int) -> dict:
        """Member ``k``'s final metrics on the epochs so far (without test or transfer
        accuracies, which ``finish`` adds from the best-validation weights)."""
        history = self.history[k]
        return {
            "seed": self.cfg.seeds[k],
            "best_val_acc": self.best_val_acc[k] if self.best_epoch[k] else math.nan,
            "best_val_score": self.best_score[k] if self.best_epoch[k] else math.nan,
            "best_epoch": self.best_epoch[k],
            "epochs_to_threshold": epochs_to_threshold(
                [r["val_acc"] for r in history], self.cfg.threshold
            ),
            "diverged": float(self.diverged_epoch[k] is not None),
            "diverged_epoch": self.diverged_epoch[k] or math.nan,
            "last_epoch": len(history),
            "max_grad_norm": max((r["grad_norm_max"] for r in history), default=math.nan),
            "test_acc_at_best": math.nan,
        }

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            **{name: module.state_dict() for name, module in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "data_rng": [g.get_state() for g in self.data_gens],
            "mask_rng": [g.get_state() for g in self.mask_gens],
            "history": self.history,
            "diverged_epoch": self.diverged_epoch,
            "best_val_acc": self.best_val_acc,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_params": self.best_params,
            **self._extra_state(),
        }

    def _extra_state(self) -> dict:
        """What else the next epoch depends on (a subclass's own state)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint format {state.get('format')!r} is not supported")
        saved = RunConfig.from_dict(state["config"])
        # How long and where a run trains, and where its data lies, may change on resume;
        # what it trains may not.
        execution = {k: getattr(self.cfg, k) for k in ("epochs", "device", "backend", "data_dir")}
        if saved.replace(**execution) != self.cfg:
            raise ConfigError("checkpoint was written by a different configuration")
        self.epoch = state["epoch"]
        for name, module in self.modules.items():
            module.load_state_dict(state[name])
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.data_gens, state["data_rng"], strict=True):
            g.set_state(s)
        for g, s in zip(self.mask_gens, state["mask_rng"], strict=True):
            g.set_state(s)
        self.history = state["history"]
        self.diverged_epoch = state["diverged_epoch"]
        self.best_val_acc = state["best_val_acc"]
        self.best_score = state["best_score"]
        self.best_epoch = state["best_epoch"]
        with torch.no_grad():
            for best, saved_best in zip(self.best_params, state["best_params"], strict=True):
                best.copy_(saved_best)
        self._load_extra_state(state)

    def _load_extra_state(self, state: dict) -> None:
        """Restore what ``_extra_state`` saved."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the checkpoint atomically (a killed write never leaves a corrupt file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(self.state_dict(), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, path: str | os.PathLike) -> None:
        # Weights only: a checkpoint in shared Tune storage must not be able to run code on
        # the node that resumes from it (everything saved is tensors and plain containers).
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, leave=False, unit="batch", file=sys.stderr)
