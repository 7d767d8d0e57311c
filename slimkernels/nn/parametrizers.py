"""Non-negative reparameterization (tensorflow-compression / CompressAI convention)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .._checks import finite_real
from .._state import WatchedAttributes


class _LowerBoundTraced(torch.autograd.Function):
    # (forward without ctx, setup_context and a generated vmap rule: torch.func's transforms
    # take it, e.g. torch.func.grad of a model's loss. Without a jvp: what torch.compile
    # traces, whose dynamo refuses a Function with one, a graph break)
    generate_vmap_rule = True

    @staticmethod
    def forward(x, bound):
        return torch.max(x, bound)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        x, bound = ctx.saved_tensors
        # pass the gradient where x is above the bound, or where it pushes x back up
        pass_through = (x >= bound) | (grad < 0)
        return pass_through.to(grad.dtype) * grad, None


class _LowerBoundFn(_LowerBoundTraced):
    # (with a jvp: forward-mode AD)
    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def jvp(ctx, x_t, bound_t):
        # the derivative of max(x, bound) in x: 1 where x is at or above the bound (the bound is
        # a constant of the parametrization: its tangent is not taken)
        x, bound = ctx.saved_tensors
        return None if x_t is None else torch.where(x >= bound, x_t, torch.zeros_like(x_t))


def lower_bound(x: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``max(x, bound)`` whose gradient still flows when it would move ``x`` up past the bound.

    Args:
        x: any float tensor. bound: 0-dim tensor of the same dtype.
    Returns: tensor of x's shape and dtype.
    """
    if torch.compiler.is_dynamo_compiling():
        return _LowerBoundTraced.apply(x, bound)
    return _LowerBoundFn.apply(x, bound)


class LowerBound(WatchedAttributes, nn.Module):
    """Module form of :func:`lower_bound`; the bound is a buffer named ``bound`` (CompressAI keys)."""

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``max(x, bound)`` of any float tensor; same shape and dtype."""
        return lower_bound(x, self.bound.to(x.dtype))


class NonNegativeParametrizer(WatchedAttributes, nn.Module):
    """Stores ``v = sqrt(max(p + pedestal, pedestal))`` and returns ``p = lb(v)^2 - pedestal``.

    Buffers ``pedestal`` and ``lower_bound.bound`` have CompressAI's names so CompressAI
    state_dicts load.

    Args:
        minimum: the smallest value ``p`` may take.
        reparam_offset: ``sqrt(pedestal)``; keeps the gradient finite near 0.
    """

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2 ** -18):
        super().__init__()
        minimum = finite_real(minimum, "minimum", type(self).__name__, 0.0, low_ok=True)
        pedestal = finite_real(reparam_offset, "reparam_offset", type(self).__name__, 0.0,
                               low_ok=True) ** 2   # (0: no pedestal, as CompressAI allows)
        self.register_buffer("pedestal", torch.tensor([pedestal]))
        self.lower_bound = LowerBound((float(minimum) + pedestal) ** 0.5)

    def init(self, x: torch.Tensor) -> torch.Tensor:
        """Stored value for the effective value ``x`` (any shape, float)."""
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Effective (non-negative) value of the stored tensor ``x``."""
        out = self.lower_bound(x)
        return out * out - self.pedestal.to(x.dtype)
