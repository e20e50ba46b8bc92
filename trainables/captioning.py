"""Image captioning on the h-detach engine: Show&Tell and Soft Attention decoders, K seed
members trained together, teacher forcing, greedy and beam-search decoding.

* **Show&Tell** (Vinyals et al. 2015): the projected image feature is the LSTM's first input,
  then the caption's words; the decoder is an ``HDetachLSTM``, so h-detach is the engine's.
* **Soft Attention** (Xu et al. 2015): the state starts from the mean spatial feature; at
  each step additive attention over the regions, queried by ``h_{t-1}``, gives a context that
  joins the word embedding as the LSTM's input. The input depends on ``h_{t-1}``, so the
  steps run one by one here, with the weights and masks of an ``HDetachLSTM`` and its rules
  exactly (Algorithm 1): at a blocked step ``h_{t-1}`` is ``stop_gradient``-ed before it
  enters the step (recurrence and attention), c-detach does the same to ``c_{t-1}``, and
  ``damp`` scales the gradient through ``h_{t-1}``.

Per epoch: teacher-forced validation loss and token accuracy, and greedy-decoded validation
CIDEr-D and BLEU-4 (``val_cider``, ``val_bleu4``); model selection on validation CIDEr (the
paper's early stopping). At the best epoch's weights, beam search (``beam_size``) on the test
images: ``test_bleu1``..``test_bleu4``, ``test_meteor`` (when Java runs), ``test_rouge_l``,
``test_cider`` (all x100, as the paper's Table 3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables import caption_metrics
from trainables.contract import EXTRA_EPOCH_METRICS
from trainables.engine import HDetachLSTM
from trainables.members import MemberEmbedding, MemberLinear, init_embedding
from trainables.seeds import stream_generator
from trainables.tasks.captions import END, PAD, START, CaptionData, CaptionSplit, load_captions
from trainables.trainer import Trainer


def _linear(n_in: int, n_out: int, gen: torch.Generator) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        lin.weight.uniform_(-bound, bound, generator=gen)
        lin.bias.uniform_(-bound, bound, generator=gen)
    return lin


def _stack(singles: list[nn.Linear], device, backend: str) -> MemberLinear:
    return MemberLinear.from_members(singles, backend).to(device)


def beam_search(
    step: Callable[[object, Tensor], tuple[Tensor, object]],
    state: object,
    reorder: Callable[[object, Tensor], object],
    items: int,
    beam: int,
    max_len: int,
    device,
) -> Tensor:
    """Highest total log-probability sequences, ``(items, max_len)`` token ids (``<end>``
    then ``<pad>`` after a sequence ends), by beam search of width ``beam``.

    ``step(state, tokens)`` takes the state of ``items * beam`` hypotheses and their last
    tokens ``(items * beam,)`` and returns log-probabilities ``(items * beam, V)`` and the new
    state; ``reorder(state, index)`` selects hypotheses. ``state`` starts with each item's
    state repeated ``beam`` times (hypotheses of one item adjacent). A finished hypothesis
    keeps its score; beam 1 is greedy decoding."""
    scores = torch.zeros(items, beam, device=device)
    scores[:, 1:] = -math.inf  # all beams of an item start identical: keep one
    tokens = torch.full((items * beam,), START, dtype=torch.long, device=device)
    seqs = torch.empty(items * beam, 0, dtype=torch.long, device=device)
    done = torch.zeros(items * beam, dtype=torch.bool, device=device)
    for _ in range(max_len):
        logp, state = step(state, tokens)
        V = logp.shape[-1]
        stay = torch.full_like(logp, -math.inf)
        stay[:, PAD] = 0.0  # a finished hypothesis continues with <pad> at no cost
        logp = torch.where(done.unsqueeze(1), stay, logp)
        total = (scores.view(-1, 1) + logp).view(items, beam * V)
        scores, flat = total.topk(beam, dim=1)
        origin = (flat // V) + torch.arange(items, device=device).unsqueeze(1) * beam
        origin, tokens = origin.view(-1), (flat % V).view(-1)
        seqs = torch.cat([seqs[origin], tokens.unsqueeze(1)], dim=1)
        done = done[origin] | (tokens == END)
        state = reorder(state, origin)
        if bool(done.all()):
            break
    best = scores.argmax(dim=1) + torch.arange(items, device=device) * beam
    out = seqs[best]
    if out.shape[1] < max_len:
        pad = torch.full((items, max_len - out.shape[1]), PAD, dtype=torch.long, device=device)
        out = torch.cat([out, pad], dim=1)
    return out


class CaptioningTrainer(Trainer):
    """``Trainer`` for ``task="captioning"`` (see the module docstring)."""

    extra_epoch_metrics = EXTRA_EPOCH_METRICS["captioning"]

    @staticmethod
    def load_data(cfg) -> CaptionData:
        kind = "spatial" if cfg.decoder == "soft_attention" else "pooled"
        return load_captions(
            cfg.data_dir, feature_kind=kind, train_size=cfg.train_size, val_size=cfg.val_size,
            test_size=cfg.test_size, min_count=cfg.min_count, max_len=cfg.max_caption_len,
            dataset=cfg.corpus,
        )  # fmt: skip

    def _build_modules(self) -> dict[str, nn.Module]:
        cfg, data = self.cfg, self.data
        V, E, H = data.vocab_size, cfg.embedding_size, cfg.hidden_size
        D = data.feature_shape[-1]
        attention = cfg.decoder == "soft_attention"
        if attention != (len(data.feature_shape) == 2):
            want = "spatial (N, R, D)" if attention else "pooled (N, D)"
            raise ValueError(f"decoder {cfg.decoder!r} needs {want} features")
        parts: dict[str, list] = {}
        for seed in cfg.seeds:
            gen = stream_generator(seed, "init")
            emb = init_embedding(V, E, gen)
            lstm = HDetachLSTM(
                E + D if attention else E, H, p_detach=cfg.p_detach, c_detach=cfg.c_detach,
                damp=cfg.damp, per_sample=cfg.per_sample_masks, backend=cfg.backend,
                precision=cfg.precision,
            )  # fmt: skip
            lstm.reset_parameters(gen)
            member = {"embedding": emb, "lstm": lstm, "head": _linear(H, V, gen)}
            if attention:
                member |= {
                    "init_h": _linear(D, H, gen), "init_c": _linear(D, H, gen),
                    "att_feat": _linear(D, H, gen), "att_hidden": _linear(H, H, gen),
                    "att_score": _linear(H, 1, gen),
                }  # fmt: skip
            else:
                member["image"] = _linear(D, E, gen)
            for name, module in member.items():
                parts.setdefault(name, []).append(module)
        modules: dict[str, nn.Module] = {}
        for name, singles in parts.items():
            if name == "embedding":
                modules[name] = MemberEmbedding.from_members(singles).to(self.device)
            elif name == "lstm":
                modules[name] = HDetachLSTM.from_members(singles).to(self.device)
            else:
                modules[name] = _stack(singles, self.device, cfg.backend)
        return modules

    # -- the decoder, teacher-forced -------------------------------------------------------

    def _features(self, split: CaptionSplit, images: Tensor) -> Tensor:
        """Features of images ``(K, B)`` -> ``(K, B, D)`` or ``(K, B, R, D)``."""
        flat = split.image_features(images.reshape(-1).cpu().numpy())
        return flat.view(*images.shape, *flat.shape[1:]).to(self.device)

    def _logits(self, feats: Tensor, captions: Tensor, masks=None) -> Tensor:
        """Teacher forcing: ``captions (K, B, L)`` -> logits ``(L - 1, K, B, V)`` for the
        tokens ``captions[..., 1:]``."""
        words = self.embedding(captions[..., :-1].permute(2, 0, 1))  # (L-1, K, B, E)
        if self.cfg.decoder == "show_and_tell":
            first = self.image(feats).unsqueeze(0)  # (1, K, B, E)
            out, _ = self.lstm(torch.cat([first, words]), masks=masks)
            return self.head(out[1:])
        h, c, keys = self._attention_start(feats)
        outs = []
        for t in range(words.shape[0]):
            h, c = self._attention_step(feats, keys, words[t], h, c, masks, t)
            outs.append(h)
        return self.head(torch.stack(outs))

    def _attention_start(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The initial ``h``, ``c`` from the mean feature, and the attention keys of the
        regions ``(R, K, B, A)`` (they do not depend on the step: computed once)."""
        mean = feats.mean(dim=2)  # (K, B, D)
        keys = self.att_feat(feats.permute(2, 0, 1, 3))
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)), keys

    def _attention_step(self, feats, keys, word, h, c, masks, t: int):
        """One Soft Attention step for every member: ``feats (K, B, R, D)``, their ``keys``,
        ``word``, ``h``, ``c`` ``(K, B, .)``; the masks of step ``t`` block ``h_{t-1}`` /
        ``c_{t-1}``."""
        lstm = self.lstm
        if masks is not None and masks.h is not None:
            h = _blocked(h, masks.h, t)
        if lstm.damp:
            h = h * (1.0 - lstm.damp) + h.detach() * lstm.damp  # same value, damped gradient
        if masks is not None and masks.c is not None:
            c = _blocked(c, masks.c, t)
        energy = self.att_score(torch.tanh(keys + self.att_hidden(h).unsqueeze(0)))
        alpha = torch.softmax(energy.squeeze(-1), dim=0)  # over regions
        context = torch.einsum("rkb,kbrd->kbd", alpha, feats)
        x = torch.cat([word, context], dim=-1)
        w_ih, w_hh, b_ih, b_hh = lstm.layer_parameters(0)
        gates = torch.baddbmm((b_ih + b_hh).unsqueeze(1), x, w_ih.transpose(1, 2))
        gates = gates + torch.bmm(h, w_hh.transpose(1, 2))
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def _caption_losses(self, logits: Tensor, captions: Tensor) -> tuple[Tensor, Tensor]:
        """Mean CE per member over the non-pad target tokens, and correct-token counts."""
        target = captions[..., 1:].permute(2, 0, 1)  # (L-1, K, B)
        keep = (target != PAD).to(logits.dtype)
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
        ).view_as(keep)
        count = keep.sum(dim=(0, 2)).clamp(min=1)
        correct = ((logits.argmax(-1) == target).to(logits.dtype) * keep).sum(dim=(0, 2))
        return (ce * keep).sum(dim=(0, 2)) / count, correct / count

    # -- training -------------------------------------------------------------------------

    def _batches(self) -> Iterator[Tensor]:
        return self._permuted_batches(self.data.train.captions.shape[0])

    def _batch_losses(self, idx: Tensor):
        train = self.data.train
        captions = train.captions[idx].to(self.device)  # (K, B, L)
        feats = self._features(train, train.caption_image[idx])
        steps = captions.shape[-1] - (1 if self.cfg.decoder == "soft_attention" else 0)
        masks = self.lstm.sample_masks(steps, captions.shape[1], self.mask_gens)
        losses, _ = self._caption_losses(self._logits(feats, captions, masks), captions)
        return losses, masks

    # -- evaluation -----------------------------------------------------------------------

    @torch.no_grad()
    def teacher_forced(self, split: CaptionSplit) -> tuple[list[float], list[float]]:
        """Validation loss and token accuracy per member, over every caption of the split."""
        K, n = self.cfg.members, split.captions.shape[0]
        chunk = max(1, self.cfg.eval_batch_size // K)
        loss = torch.zeros(K, dtype=torch.float64)
        acc = torch.zeros(K, dtype=torch.float64)
        for lo in range(0, n, chunk):
            caps = split.captions[lo : lo + chunk].to(self.device)
            b = caps.shape[0]
            caps = caps.unsqueeze(0).expand(K, -1, -1)
            images = split.caption_image[lo : lo + chunk].unsqueeze(0).expand(K, -1)
            l, a = self._caption_losses(self._logits(self._features(split, images), caps), caps)
            loss += l.double().cpu() * b
            acc += a.double().cpu() * b
        return (loss / n).tolist(), (acc / n).tolist()

    @torch.no_grad()
    def decode(self, split: CaptionSplit, beam: int = 1) -> list[list[str]]:
        """Each member's caption of every image of the split (beam 1: greedy)."""
        K, N = self.cfg.members, len(split)
        out: list[list[str]] = [[] for _ in range(K)]
        chunk = max(1, self.cfg.eval_batch_size // (K * beam))
        for lo in range(0, N, chunk):
            index = torch.arange(lo, min(N, lo + chunk))
            feats = self._features(split, index.unsqueeze(0).expand(K, -1))  # (K, n, ...)
            seqs = self._search(feats, beam)  # (K, n, L)
            for k in range(K):
                out[k] += [self.data.decode(s) for s in seqs[k].tolist()]
        return out

    def _search(self, feats: Tensor, beam: int) -> Tensor:
        K, n = feats.shape[:2]
        rep = feats.repeat_interleave(beam, dim=1)  # (K, n * beam, ...)
        if self.cfg.decoder == "show_and_tell":
            _, (h, c) = self.lstm(self.image(rep).unsqueeze(0))  # the image step

            def step(state, tokens):
                h, c = state
                word = self.embedding(tokens.view(1, K, -1))
                out, (h, c) = self.lstm(word, (h, c))
                return torch.log_softmax(self.head(out[0]), -1).view(K * n * beam, -1), (h, c)

            def reorder(state, origin):
                return tuple(s.view(1, -1, s.shape[-1])[:, origin].view_as(s) for s in state)

            state = (h, c)
        else:
            h, c, keys = self._attention_start(rep)
            state = (h, c)

            def step(state, tokens):
                h, c = state
                word = self.embedding(tokens.view(K, -1))
                h, c = self._attention_step(rep, keys, word, h, c, None, 0)
                return torch.log_softmax(self.head(h), -1).view(K * n * beam, -1), (h, c)

            def reorder(state, origin):
                return tuple(s.reshape(-1, s.shape[-1])[origin].view_as(s) for s in state)

        seqs = beam_search(step, state, reorder, K * n, beam, self.cfg.max_caption_len + 1,
                           self.device)  # fmt: skip
        return seqs.view(K, n, -1)

    def _scores(self, split: CaptionSplit, beam: int, meteor: bool) -> list[dict[str, float]]:
        hyps = self.decode(split, beam)
        return [caption_metrics.score(split.references, h, meteor=meteor) for h in hyps]

    def _validate(self) -> dict[str, list[float]]:
        val = self.data.val
        loss, acc = self.teacher_forced(val)
        scores = self._scores(val, 1, meteor=False)
        cider = [100 * s["cider"] for s in scores]
        return {
            "val_loss": loss,
            "val_acc": acc,
            "score": cider,
            "val_cider": cider,
            "val_bleu4": [100 * s["bleu4"] for s in scores],
        }

    def _final_metrics(self, finals: list[dict]) -> None:
        scores = self._scores(self.data.test, self.cfg.beam_size, meteor=True)
        for k, f in enumerate(finals):
            for name, value in scores[k].items():
                f[f"test_{name}"] = 100 * value
            best = self.best_epoch[k]
            f["best_val_cider"] = self.history[k][best - 1]["val_cider"] if best else math.nan


def _blocked(state: Tensor, mask: Tensor, t: int) -> Tensor:
    """``stop_gradient`` of ``state (K, B, H)`` where the mask of step ``t`` says so: mask
    ``(K, 1, T)`` (one draw per member and step) or ``(K, 1, T, B)`` (per sample)."""
    m = mask[:, 0, t]
    m = m.view(-1, 1, 1) if m.dim() == 1 else m.unsqueeze(-1)
    m = m.to(state.device)
    return torch.where(m, state.detach(), state)


__all__ = ["CaptioningTrainer", "beam_search"]
