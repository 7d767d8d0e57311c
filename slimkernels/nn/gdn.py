"""The GDN family for slimmable networks: SlimGDN (shared), SwitchGDN (per width), SlimGDNPlus."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import ops
from .._state import WatchedAttributes, bump_generation, cached_on_module
from .._checks import as_flag, as_width, finite_real, is_int, not_a_tensor, width_list
from ._script import NotScriptable
from .parametrizers import NonNegativeParametrizer, lower_bound


class SlimGDN(NotScriptable, WatchedAttributes, nn.Module):
    """GDN / IGDN of ``in_channels`` channels, applied at any active width ``C <= in_channels``.

    Width ``C`` uses ``beta[:C]`` and ``gamma[:C, :C]`` (read in place). Parameters ``beta``
    ``[C]`` and ``gamma`` ``[C, C]`` are stored reparameterized exactly as in CompressAI's ``GDN``,
    so a CompressAI GDN state_dict loads and gives the same output at full width.

    Args:
        in_channels: the full channel count C_max.
        inverse: IGDN (``x * sqrt(...)``) instead of GDN.
        beta_min: lower bound of the effective beta.
        gamma_init: the effective gamma starts as ``gamma_init * I``.
    """

    def __init__(self, in_channels: int, inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1):
        super().__init__()
        if not is_int(in_channels) or in_channels < 1:
            raise ValueError(f"{type(self).__name__}: in_channels must be an int >= 1, got "
                             f"{in_channels!r}")
        in_channels = self.in_channels = int(in_channels)
        where = type(self).__name__
        beta_min = finite_real(beta_min, "beta_min", where, 0.0, low_ok=True)
        gamma_init = finite_real(gamma_init, "gamma_init", where)
        self.inverse = as_flag(inverse, "inverse", type(self).__name__)
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.beta = nn.Parameter(self.beta_reparam.init(torch.ones(in_channels)))
        self.gamma_reparam = NonNegativeParametrizer()
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma_init * torch.eye(in_channels)))

    def effective_params(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Effective ``(beta [C_max], gamma [C_max, C_max])`` float32 after the
        reparameterization.

        Without autograd (inference) the result is cached until a parameter or buffer of this
        layer changes (tracked by the tensors' version counters, identities and storages, as the
        conv op's weight cache: writes through ``.data`` bypass versions, call
        :meth:`clear_cache` after them). The 5 small ops cost ~30 us per layer per call; the
        cache check walks this layer's state tensors (its parameters and the parametrizers'
        buffers) in C: ~1.3 us, against ~10 us for the same key built in Python."""
        if torch.is_grad_enabled() and (self.beta.requires_grad or self.gamma.requires_grad):
            return self.beta_reparam(self.beta), self.gamma_reparam(self.gamma)

        def build():   # (outside inference mode: tensors built inside it cannot be saved for a
            with torch.inference_mode(False), torch.no_grad():   # later backward of the input)
                return self.beta_reparam(self.beta), self.gamma_reparam(self.gamma)
        return cached_on_module(self, "_effective_cache", self, build)

    def clear_cache(self) -> None:
        """Drop the cached effective parameters (see :meth:`effective_params`; a build in flight
        in another thread is not kept either)."""
        bump_generation()
        self.__dict__.pop("_effective_cache", None)

    def _check(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor):
            raise not_a_tensor(x, type(self).__name__)
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects [N, C, H, W], got {tuple(x.shape)}")
        if x.shape[1] > self.in_channels:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[1]} channels, more than "
                             f"the {self.in_channels} this layer holds")

    def op_kwargs(self, width: int) -> Dict:
        """Keyword arguments of :func:`slimkernels.ops.gdn` at ``width`` (full effective
        parameters, read in place by the op), e.g. to fuse this GDN into a convolution."""
        width = as_width(width, f"SlimGDN({self.in_channels}).op_kwargs")
        if not 1 <= width <= self.in_channels:
            raise ValueError(f"SlimGDN({self.in_channels}) cannot run at width {width}")
        beta, gamma = self.effective_params()
        return {"beta": beta, "gamma": gamma, "inverse": self.inverse}

    def forward(self, x: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
        """``x``: ``[N, C, H, W]`` float; returns the same shape and dtype. ``width`` is ignored
        (the active width is ``x.shape[1]``); it is accepted so every slimmable layer has one call."""
        self._check(x)
        return ops.gdn(x, **self.op_kwargs(x.shape[1]))

    # what a conv with this GDN in its epilogue computes (SlimSequential's fusion): a subclass
    # or patch with another forward is not fused (slimkernels._hooks.runs_more_than_forward)
    _op_forward = forward

    def extra_repr(self) -> str:
        """``"C, inverse=..."`` in the module's repr."""
        return f"{self.in_channels}, inverse={self.inverse}"


class _WidthSelectedGDN(NotScriptable, WatchedAttributes, nn.Module):
    """Base of the GDN layers whose parameters depend on the active width (one of ``widths``)."""

    def __init__(self, widths: Sequence[int], inverse: bool):
        super().__init__()
        self.widths = width_list(widths, type(self).__name__)
        if len(set(self.widths)) != len(self.widths) or min(self.widths) < 1:
            raise ValueError(f"{type(self).__name__}: widths must be distinct ints >= 1, got "
                             f"{list(widths)}")
        self.inverse = as_flag(inverse, "inverse", type(self).__name__)

    def _index(self, C: int, shape) -> int:
        if C not in self.widths:
            raise ValueError(f"{type(self).__name__} has widths {self.widths}, got input of shape "
                             f"{tuple(shape)}")
        return self.widths.index(C)

    def op_kwargs(self, width: int) -> Dict:  # pragma: no cover - abstract
        raise NotImplementedError

    # The widths go into the state dict's metadata (not a tensor: the state and the model id
    # stay as they were), and a load checks them: the per-width parameters are matched by
    # position, so SlimGDNPlus([96, 48])'s scalars loaded silently into SlimGDNPlus([48, 96])
    # (swapped) or SlimGDNPlus([96, 72]) (width 48's given to 72). A state dict without them
    # (saved before, or rebuilt as a plain dict) loads as before.
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        meta = getattr(destination, "_metadata", None)
        if meta is not None and prefix[:-1] in meta:
            meta[prefix[:-1]]["widths"] = list(self.widths)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved = local_metadata.get("widths")
        if saved is not None and list(saved) != list(self.widths):
            error_msgs.append(
                f"{type(self).__name__} {prefix[:-1] or '(the root)'} was saved with widths "
                f"{list(saved)}, this one has {self.widths}: its per-width parameters would go to "
                f"other widths; build it with widths={list(saved)}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
        """``x``: ``[N, C, H, W]`` with C one of ``widths``; returns the same shape and dtype.
        ``width`` is ignored, as by :class:`SlimGDN` (the input's channel count picks the
        parameters); it is accepted so every slimmable layer has one call."""
        if not isinstance(x, torch.Tensor):
            raise not_a_tensor(x, type(self).__name__)
        C = x.shape[1] if x.dim() == 4 else -1
        self._index(C, x.shape)
        return ops.gdn(x, **self.op_kwargs(C))

    _op_forward = forward   # (see SlimGDN._op_forward)


class SwitchGDN(_WidthSelectedGDN):
    """An independent GDN per width (what the official SlimCAE code uses).

    ``gdns.k`` is a :class:`SlimGDN` of ``widths[k]`` channels; the input's channel count picks it.
    The ``gdns`` hold the parameters: this module reads them (``op_kwargs``) and runs the op
    itself, so a hook registered on one of them, or a ``forward`` of its own, does not run
    (hook this module instead).

    Args:
        widths: the allowed widths (distinct; the largest is the full channel count).
        inverse: IGDN instead of GDN.
        beta_min: lower bound of the effective beta. gamma_init: the effective gamma starts as
            ``gamma_init * I``.

    Raises:
        ValueError: ``widths`` empty or repeated; in ``forward``, an input whose channel count is
            not one of ``widths``.
    """

    def __init__(self, widths: Sequence[int], inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1):
        super().__init__(widths, inverse)
        self.gdns = nn.ModuleList(SlimGDN(w, inverse, beta_min, gamma_init) for w in self.widths)

    def op_kwargs(self, width: int) -> Dict:
        """Keyword arguments of :func:`slimkernels.ops.gdn` at ``width`` (one of ``widths``)."""
        return self.gdns[self._index(width, ("?", width))].op_kwargs(width)


class SlimGDNPlus(_WidthSelectedGDN):
    """Shared GDN plus four non-negative scalars per width (SlimGDN+).

    For width index k: ``gamma_k = gamma_scale[k] * gamma[:w,:w] + gamma_bias[k]`` and
    ``beta_k = beta_scale[k] * beta[:w] + beta_bias[k]``, after the reparameterization.
    Scales start at 1, biases at 0. ``gdn`` (the shared :class:`SlimGDN`) holds beta and gamma:
    this module reads them and runs the op itself, so a hook on ``gdn``, or a ``forward`` of
    its own, does not run (hook this module instead).

    Args:
        widths: the allowed widths (distinct; the largest is the full channel count).
        inverse: IGDN instead of GDN.
        beta_min: lower bound of the effective beta, ``beta_k`` included (its scale and bias
            can both reach 0). gamma_init: the effective gamma starts as ``gamma_init * I``.

    Raises:
        ValueError: ``widths`` empty or repeated; in ``forward``, an input whose channel count is
            not one of ``widths``.
    """

    def __init__(self, widths: Sequence[int], inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1):
        super().__init__(widths, inverse)
        self.gdn = SlimGDN(max(self.widths), inverse, beta_min, gamma_init)
        self.beta_min = finite_real(beta_min, "beta_min", type(self).__name__, 0.0, low_ok=True)
        K = len(self.widths)
        self.scalar_reparam = NonNegativeParametrizer()
        init = self.scalar_reparam.init
        self.gamma_scale = nn.Parameter(init(torch.ones(K)))
        self.gamma_bias = nn.Parameter(init(torch.zeros(K)))
        self.beta_scale = nn.Parameter(init(torch.ones(K)))
        self.beta_bias = nn.Parameter(init(torch.zeros(K)))

    def op_kwargs(self, width: int) -> Dict:
        """Keyword arguments of :func:`slimkernels.ops.gdn` at ``width`` (one of ``widths``),
        with this width's four scalars."""
        k = self._index(width, ("?", width))
        beta, gamma = self.gdn.effective_params()
        r = self.scalar_reparam
        # beta_k itself, bounded below by beta_min: its scale and bias are only non-negative, so
        # both at 0 (where training can take them) made beta_k 0 and the GDN's output inf / NaN
        beta_k = r(self.beta_scale)[k] * beta + r(self.beta_bias)[k]
        # (the bound filled on beta_k's device: torch.tensor(float, device=...) was a
        # host-to-device copy on CUDA, a sync per layer that breaks graph capture)
        beta_k = lower_bound(beta_k, beta_k.new_full((), self.beta_min))
        return {"beta": beta_k, "gamma": gamma, "inverse": self.inverse,
                "gamma_scale": r(self.gamma_scale)[k], "gamma_bias": r(self.gamma_bias)[k]}


#: The names :func:`make_gdn` (and ``SlimCAE(gdn=...)``, ``--gdn``) takes.
GDN_VARIANTS = ("switch", "slim", "slim+")
#: Earlier spellings still read, so that model files, checkpoints and runs that stored them load
#: and resume with the model id they had (new models: the names above; the same weights under
#: another spelling have another model id, as the config is part of it).
GDN_LEGACY_NAMES = {"slimplus": "slim+"}


def make_gdn(variant: str, widths: Sequence[int], inverse: bool = False) -> nn.Module:
    """Build a GDN layer of the named variant: ``"switch"`` (:class:`SwitchGDN`), ``"slim"``
    (:class:`SlimGDN` of ``max(widths)`` channels) or ``"slim+"`` (:class:`SlimGDNPlus`; its
    earlier spelling ``"slimplus"`` is still read: :data:`GDN_LEGACY_NAMES`).

    Raises:
        ValueError: unknown ``variant``; ``widths`` empty or not positive ints.
    """
    if variant == "slim":   # (the others check their widths themselves)
        return SlimGDN(max(width_list(widths, "make_gdn")), inverse)
    if variant == "switch":
        return SwitchGDN(widths, inverse)
    if variant == "slim+" or GDN_LEGACY_NAMES.get(variant) == "slim+":
        return SlimGDNPlus(widths, inverse)
    raise ValueError(f"unknown GDN variant {variant!r}: use one of {', '.join(GDN_VARIANTS)}")
