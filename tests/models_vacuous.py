"""Models on which an output check could pass whatever the rewrites computed (issue 26, "the gate can pass
vacuously"); fxfusion's verification must flag each.

  tests/models_vacuous.py           an MLP whose head is zero-initialised: the output (the head's bias) does not
                                    depend on the input
  tests/models_vacuous.py:biased    an MLP whose output is dominated by a bias of 1e4: a 10% error in the weights
                                    moves it by about 1e-5, under float32's 1e-4 limit
"""

from __future__ import annotations

import torch
from torch import nn

WIDTH, BATCH = 64, 8


class MLP(nn.Module):
    def __init__(self, head_weight: float = 1.0, head_bias: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.act, self.head = nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH)
        with torch.no_grad():
            self.head.weight.mul_(head_weight)
            self.head.bias.fill_(head_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, WIDTH) -> (B, WIDTH)
        hidden = x @ self.up.weight.t() + self.up.bias  # written out, as many models do: addmm is then a rewrite
        return self.head(self.act(hidden))


def get_model() -> nn.Module:
    return MLP(head_weight=0.0, head_bias=0.5).eval()  # the zero-initialised head of a fresh classifier


def get_inputs():
    return (torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(1)),)


def biased():
    """The output is the head's bias, 1e4, plus a term of size ~0.1."""
    return MLP(head_bias=1e4).eval(), get_inputs()
