"""Language modelling on the h-detach engine: embedding, 1-2 ``HDetachLSTM`` layers, dropout,
an output layer (optionally tied to the embedding), K seed members trained together.

Training is truncated backpropagation through time: the training split is cut into
``batch_size`` parallel streams, each epoch walks them in windows of ``seq_len`` tokens, and
the hidden state is carried from one window to the next (detached, so gradients stay inside a
window); h-detach blocks ``h_{t-1}`` inside each window exactly as in the engine. The state
is reset at the start of each epoch, so an epoch checkpoint holds everything. Per epoch:
validation loss (mean NLL per token, nats), perplexity ``exp(val_loss)`` (``val_ppl``) and
next-token accuracy (``val_acc``). Model selection: the lowest validation perplexity; at that
epoch's weights, ``test_perplexity`` and ``test_loss``. Optimizers: SGD, momentum SGD,
RMSprop and Adam (``optimizer``), as the project's source notes compare them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.config import ConfigError
from trainables.contract import EXTRA_EPOCH_METRICS
from trainables.engine import HDetachLSTM
from trainables.members import MemberEmbedding, MemberLinear, init_embedding
from trainables.seeds import stream_generator
from trainables.tasks.text import TextData, batchify, load_text
from trainables.trainer import Trainer

EVAL_STREAMS = 10


class TiedDecoder(nn.Module):
    """The output layer sharing the embedding's weights (Press & Wolf), with its own bias."""

    def __init__(self, embedding: MemberEmbedding):
        super().__init__()
        self.embedding = [embedding]  # not a submodule: its weight is counted once
        self.bias = nn.Parameter(torch.zeros(embedding.members, embedding.num))

    def forward(self, x: Tensor) -> Tensor:  # (T, K, B, E) -> (T, K, B, V)
        weight = self.embedding[0].weight  # (K, V, E)
        return torch.einsum("tkbe,kve->tkbv", x, weight) + self.bias.view(1, -1, 1, weight.shape[1])


def member_dropout(x: Tensor, p: float, gens: Sequence[torch.Generator]) -> Tensor:
    """Inverted dropout on ``(T, K, B, F)`` with member k's masks from its own generator
    (drawn on the CPU, so every device and every resumed run draws the same)."""
    if p <= 0:
        return x
    T, K, B, n = x.shape
    keep = torch.stack([torch.rand(T, B, n, generator=g) >= p for g in gens], dim=1)
    return x * keep.to(x.device, x.dtype) / (1.0 - p)


class LanguageModelTrainer(Trainer):
    """``Trainer`` for ``task="language_model"`` (see the module docstring)."""

    extra_epoch_metrics = EXTRA_EPOCH_METRICS["language_model"]

    @staticmethod
    def load_data(cfg) -> TextData:
        return load_text(
            cfg.corpus, data_dir=cfg.data_dir, level=cfg.level, min_count=cfg.min_count
        )

    def _build_modules(self) -> dict[str, nn.Module]:
        cfg, data = self.cfg, self.data
        V, E, H = data.vocab_size, cfg.embedding_size, cfg.hidden_size
        if cfg.tie_weights and E != H:
            raise ConfigError(f"tie_weights needs embedding_size == hidden_size, got {E} and {H}")
        embeddings, lstms, heads = [], [], []
        for seed in cfg.seeds:
            gen = stream_generator(seed, "init")
            emb = init_embedding(V, E, gen)
            lstm = HDetachLSTM(
                E, H, cfg.num_layers, p_detach=cfg.p_detach, c_detach=cfg.c_detach,
                damp=cfg.damp, mask_scope=cfg.mask_scope, per_sample=cfg.per_sample_masks,
                backend=cfg.backend, precision=cfg.precision,
            )  # fmt: skip
            lstm.reset_parameters(gen)
            head = nn.Linear(H, V)
            with torch.no_grad():
                head.weight.uniform_(-0.1, 0.1, generator=gen)
                head.bias.zero_()
            embeddings.append(emb)
            lstms.append(lstm)
            heads.append(head)
        modules: dict[str, nn.Module] = {
            "embedding": MemberEmbedding.from_members(embeddings).to(self.device),
            "lstm": HDetachLSTM.from_members(lstms).to(self.device),
        }
        modules["head"] = (
            TiedDecoder(modules["embedding"]).to(self.device)
            if cfg.tie_weights
            else MemberLinear.from_members(heads, cfg.backend).to(self.device)
        )
        self.dropout_gens = [stream_generator(s, "dropout") for s in cfg.seeds]
        self.train_streams = batchify(data.train, cfg.batch_size)
        self._state: tuple[Tensor, Tensor] | None = None
        return modules

    # -- training -------------------------------------------------------------------------

    def _windows(self, streams: Tensor) -> list[int]:
        return list(range(0, streams.shape[1] - 1, self.cfg.seq_len))

    def _batches(self) -> Iterator[int]:
        starts = self._windows(self.train_streams)
        if self.cfg.batches_per_epoch is not None:
            starts = starts[: self.cfg.batches_per_epoch]
        yield from starts

    def _epoch_start(self) -> None:
        self._state = None

    def _forward(self, x: Tensor, state, masks=None, train: bool = False):
        """Token ids ``(T, B)`` for every member -> logits ``(T, K, B, V)`` and the state."""
        K = self.cfg.members
        ids = x.unsqueeze(1).expand(-1, K, -1)
        emb = self.embedding(ids)
        if train:
            emb = member_dropout(emb, self.cfg.dropout, self.dropout_gens)
        out, state = self.lstm(emb, state, masks=masks)
        if train:
            out = member_dropout(out, self.cfg.dropout, self.dropout_gens)
        return self.head(out), state

    def _batch_losses(self, start: int):
        s = self.train_streams
        L = min(self.cfg.seq_len, s.shape[1] - 1 - start)
        x = s[:, start : start + L].t().to(self.device)  # (T, B)
        y = s[:, start + 1 : start + 1 + L].t().to(self.device)
        masks = self.lstm.sample_masks(L, x.shape[1], self.mask_gens)
        state = None if self._state is None else tuple(t.detach() for t in self._state)
        logits, self._state = self._forward(x, state, masks=masks, train=True)
        K, V = logits.shape[1], logits.shape[-1]
        target = y.unsqueeze(1).expand(-1, K, -1)
        ce = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), reduction="none")
        return ce.view(L, K, -1).mean(dim=(0, 2)), masks

    # -- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def nll(self, stream: Tensor) -> tuple[list[float], list[float]]:
        """Mean NLL per token (nats) and next-token accuracy per member over a whole split,
        in ``EVAL_STREAMS`` parallel streams with the state carried across windows."""
        K = self.cfg.members
        streams = batchify(stream, min(EVAL_STREAMS, max(1, stream.shape[0] // 4)))
        total = torch.zeros(K, dtype=torch.float64, device=self.device)
        correct = torch.zeros(K, dtype=torch.float64, device=self.device)
        count, state = 0, None
        for start in self._windows(streams):
            L = min(self.cfg.seq_len, streams.shape[1] - 1 - start)
            x = streams[:, start : start + L].t().to(self.device)
            y = streams[:, start + 1 : start + 1 + L].t().to(self.device)
            logits, state = self._forward(x, state)
            V = logits.shape[-1]
            target = y.unsqueeze(1).expand(-1, K, -1)
            ce = F.cross_entropy(logits.reshape(-1, V), target.reshape(-1), reduction="none")
            total += ce.view(L, K, -1).double().sum(dim=(0, 2))
            correct += (logits.argmax(-1) == target).double().sum(dim=(0, 2))
            count += y.numel()
        return (total / count).tolist(), (correct / count).tolist()

    def _validate(self) -> dict[str, list[float]]:
        loss, acc = self.nll(self.data.val)
        ppl = [_perplexity(v) for v in loss]
        # The selection score, higher is better: 1 / perplexity, the geometric mean probability
        # given to the next token (0 for a diverged model, like a classifier's accuracy).
        score = [1.0 / v if v > 0 else 0.0 for v in ppl]
        return {"val_loss": loss, "val_acc": acc, "score": score, "val_ppl": ppl}

    def _final_metrics(self, finals: list[dict]) -> None:
        loss, _ = self.nll(self.data.test)
        for k, f in enumerate(finals):
            f["test_loss"] = loss[k]
            f["test_perplexity"] = _perplexity(loss[k])
            best = self.best_epoch[k]
            f["best_val_perplexity"] = self.history[k][best - 1]["val_ppl"] if best else math.nan

    def _extra_state(self) -> dict:
        return {"dropout_rng": [g.get_state() for g in self.dropout_gens]}

    def _load_extra_state(self, state: dict) -> None:
        for g, s in zip(self.dropout_gens, state["dropout_rng"], strict=True):
            g.set_state(s)


def _perplexity(nll: float) -> float:
    return math.exp(nll) if math.isfinite(nll) and nll < 700 else math.inf
