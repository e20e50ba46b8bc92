"""The authors' cell layout: weights converted from it make this engine compute the same
outputs and gradients as a cell laid out as theirs, and the conversion round-trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.authors import from_authors_cell, to_authors_cell
from trainables.engine import HDetachLSTM
from trainables.oracle import lstm_cell

I, H, T, B = 3, 5, 7, 4


class AuthorsLayoutCell(nn.Module):
    """A cell laid out as the authors' ``lstm_cell.py`` describes it: two linear maps to 4H
    pre-activations ordered [i, f, o, g] (sigmoid on the first 3H, tanh on the last H)."""

    def __init__(self) -> None:
        super().__init__()
        self.i2h = nn.Linear(I, 4 * H)
        self.h2h = nn.Linear(H, 4 * H)

    def forward(self, x, h, c):
        pre = self.i2h(x) + self.h2h(h)
        i, f, o = pre[:, : 3 * H].sigmoid().chunk(3, dim=1)
        g = pre[:, 3 * H :].tanh()
        c = f * c + i * g
        return o * c.tanh(), c


def _authors_run(cell: AuthorsLayoutCell, x: torch.Tensor, detach_at: set[int]):
    h = c = x.new_zeros(B, H)
    for t in range(T):
        if t in detach_at:  # their h-detach: stop the gradient into the previous h
            h = h.detach()
        h, c = cell(x[t], h, c)
    return h


@pytest.mark.parametrize("detach_at", [set(), {2, 3, 5}])
def test_converted_weights_give_the_authors_outputs_and_gradients(detach_at):
    torch.manual_seed(0)
    cell = AuthorsLayoutCell().double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    lstm = HDetachLSTM(I, H, backend="torch").double()
    lstm.load_state_dict(from_authors_cell(cell.state_dict()))
    theirs = _authors_run(cell, x, detach_at)
    theirs.sum().backward()

    # This engine's cell with the same per-step detaching (its weights, its layout).
    weights = lstm.layer_parameters(0)
    h = c = x.new_zeros(B, H)
    for t in range(T):
        if t in detach_at:
            h = h.detach()
        h, c = lstm_cell(x[t], h, c, *weights)
    assert (h - theirs).abs().max() <= 1e-12
    h.sum().backward()
    y, _ = lstm(x)  # the engine itself, without detaching
    if not detach_at:
        assert (y[-1] - theirs).abs().max() <= 1e-12

    their_grads = {k: p.grad for k, p in cell.named_parameters()}
    our_grads = {k: p.grad for k, p in lstm.named_parameters()}
    for key, grad in from_authors_cell(their_grads).items():
        assert (grad - our_grads[key]).abs().max() <= 1e-12, key


def test_conversion_round_trips_and_names_bad_input():
    cell = AuthorsLayoutCell()
    state = cell.state_dict()
    back = to_authors_cell(from_authors_cell(state))
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    ours = from_authors_cell(state)
    # [i, f, o, g] -> [i, f, g, o]: the output gate's rows move from third block to fourth
    assert torch.equal(ours["weight_ih_l0"][3 * H :], state["i2h.weight"][2 * H : 3 * H])
    assert torch.equal(ours["bias_hh_l0"][2 * H : 3 * H], state["h2h.bias"][3 * H :])
    with pytest.raises(ValueError, match="missing: h2h.bias"):
        from_authors_cell({k: v for k, v in state.items() if k != "h2h.bias"})
    with pytest.raises(ValueError, match="must have 4H rows"):
        from_authors_cell({**state, "i2h.bias": torch.zeros(7)})
