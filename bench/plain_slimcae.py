"""SlimCAE transforms written in plain PyTorch, the way a user would write them without slimkernels.

This is the baseline of the end-to-end benchmark (:mod:`bench.e2e`): ``F.conv2d`` /
``F.conv_transpose2d`` on the sliced full weights, eager GDN (``x^2 -> 1x1 conv -> rsqrt -> mul``,
CompressAI's composition, parameters reparameterized on every call), NCHW, fp32. It loads the SAME
state_dict as :class:`slimkernels.models.SlimCAE` (the transform keys ``g_a.*`` / ``g_s.*``; the
entropy model is not part of the comparison: both pipelines code with the same tables), so the
two give the same reconstruction up to float rounding.

    plain = PlainSlimCAE.from_model(model)      # or PlainSlimCAE(widths); plain.load_state_dict(sd)
    y = plain.encode(x, 96)                      # [1, 96, H/16, W/16]
    x_hat = plain.decode(y_hat)                  # [1, 3, H, W]
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# (kind, kernel, stride, padding, output_padding, bias) of the six convolutions, in order
ENC = [("conv", 9, 4, 4, 0, True), ("conv", 5, 2, 2, 0, True), ("conv", 5, 2, 2, 0, False)]
DEC = [("tconv", 5, 2, 2, 1, True), ("tconv", 5, 2, 2, 1, True), ("tconv", 9, 4, 4, 3, True)]


def _effective(v: torch.Tensor, bound: torch.Tensor, pedestal: torch.Tensor) -> torch.Tensor:
    """CompressAI's NonNegativeParametrizer forward: ``max(v, bound)^2 - pedestal``."""
    v = torch.max(v, bound)
    return v * v - pedestal


class _PlainGDN(nn.Module):
    """GDN parameters under the SAME state_dict keys as ``slimkernels.nn.SlimGDN``."""

    def __init__(self, channels: int):
        super().__init__()
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(torch.eye(channels))
        for name in ("beta_reparam", "gamma_reparam"):
            m = nn.Module()
            m.register_buffer("pedestal", torch.zeros(1))
            m.lower_bound = nn.Module()
            m.lower_bound.register_buffer("bound", torch.zeros(1))
            setattr(self, name, m)

    def forward(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        """Eager GDN at width ``C = x.shape[1]``: 4 kernels plus the reparameterization."""
        C = x.shape[1]
        br, gr = self.beta_reparam, self.gamma_reparam
        beta = _effective(self.beta, br.lower_bound.bound, br.pedestal)[:C]
        gamma = _effective(self.gamma, gr.lower_bound.bound, gr.pedestal)[:C, :C]
        norm = F.conv2d(x * x, gamma[:, :, None, None], beta)
        return x * torch.sqrt(norm) if inverse else x * torch.rsqrt(norm)


class _PlainSwitchGDN(nn.Module):
    """One GDN per width (keys ``gdns.k.*`` as ``slimkernels.nn.SwitchGDN``)."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        self.widths = list(widths)
        self.gdns = nn.ModuleList(_PlainGDN(w) for w in self.widths)

    def forward(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        return self.gdns[self.widths.index(x.shape[1])](x, inverse)


class _PlainConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, transposed: bool, bias: bool):
        super().__init__()
        shape = (cin, cout, k, k) if transposed else (cout, cin, k, k)
        self.weight = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None


class PlainSlimCAE(nn.Module):
    """The SlimCAE transforms in plain PyTorch (fp32, NCHW, eager).

    Args:
        widths: sub-network widths, largest first (default 192, 144, 96, 72, 48).
        gdn: ``"switch"`` (one GDN per width, the default of SlimCAE) or ``"slim"`` (one shared
            GDN, sliced).
    """

    def __init__(self, widths: Sequence[int] = (192, 144, 96, 72, 48), gdn: str = "switch"):
        super().__init__()
        if gdn not in ("switch", "slim"):
            raise ValueError(f"PlainSlimCAE supports gdn='switch' or 'slim', got {gdn!r}")
        self.widths = sorted({int(w) for w in widths}, reverse=True)
        N = self.widths[0]
        self.gdn_variant = gdn

        def make_gdn():
            return _PlainSwitchGDN(self.widths) if gdn == "switch" else _PlainGDN(N)

        ga, gs = [], []
        for i, (_, k, s, p, op, b) in enumerate(ENC):
            ga += [_PlainConv(3 if i == 0 else N, N, k, False, b), make_gdn()]
        for i, (_, k, s, p, op, b) in enumerate(DEC):
            gs += [make_gdn(), _PlainConv(N, 3 if i == 2 else N, k, True, b)]
        self.g_a = nn.ModuleList(ga)
        self.g_s = nn.ModuleList(gs)

    @classmethod
    def from_model(cls, model) -> "PlainSlimCAE":
        """A plain copy of a :class:`slimkernels.models.SlimCAE` (its transform state_dict)."""
        plain = cls(model.widths, model.gdn_variant)
        plain.load_state_dict(model.state_dict())
        return plain

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True):
        """Load the transform keys (``g_a.*``, ``g_s.*``) of a SlimCAE state_dict; with
        ``strict`` every one of this module's keys must be present (the entropy model's keys
        are ignored: they are not part of the transforms)."""
        sd = {k: v for k, v in state_dict.items() if k.startswith(("g_a.", "g_s."))}
        missing, unexpected = super().load_state_dict(sd, strict=False)
        if strict and (missing or unexpected):
            raise ValueError(f"PlainSlimCAE.load_state_dict: missing keys {missing}, "
                             f"unexpected keys {unexpected}: is this a SlimCAE state_dict with "
                             f"gdn={self.gdn_variant!r} and widths {self.widths}?")
        return missing, unexpected

    def _width(self, width) -> int:
        w = self.widths[0] if width is None else int(width)
        if w not in self.widths:
            raise ValueError(f"width {width} is not one of {self.widths}")
        return w

    def encoder_steps(self, width=None) -> List[Tuple[str, Callable]]:
        """The encoder at ``width`` as ``[(name, fn)]`` (conv1, gdn1, ..., gdn3), ``fn(x) -> x``."""
        w = self._width(width)
        steps = []
        for i, (_, k, s, p, op, b) in enumerate(ENC):
            conv, gdn = self.g_a[2 * i], self.g_a[2 * i + 1]

            def c(x, conv=conv, s=s, p=p):
                return F.conv2d(x, conv.weight[:w, :x.shape[1]],
                                None if conv.bias is None else conv.bias[:w], stride=s, padding=p)
            steps += [(f"enc.conv{i + 1}", c),
                      (f"enc.gdn{i + 1}", lambda x, gdn=gdn: gdn(x, inverse=False))]
        return steps

    def decoder_steps(self, width=None) -> List[Tuple[str, Callable]]:
        """The decoder at ``width`` as ``[(name, fn)]`` (igdn1, tconv1, ..., tconv3)."""
        w = self._width(width)
        steps = []
        for i, (_, k, s, p, op, b) in enumerate(DEC):
            gdn, conv = self.g_s[2 * i], self.g_s[2 * i + 1]
            co = 3 if i == 2 else w

            def c(x, conv=conv, s=s, p=p, op=op, co=co):
                return F.conv_transpose2d(x, conv.weight[:x.shape[1], :co], conv.bias[:co],
                                          stride=s, padding=p, output_padding=op)
            steps += [(f"dec.igdn{i + 1}", lambda x, gdn=gdn: gdn(x, inverse=True)),
                      (f"dec.tconv{i + 1}", c)]
        return steps

    def encode(self, x: torch.Tensor, width=None) -> torch.Tensor:
        """``[N, 3, H, W]`` fp32 -> ``[N, width, H/16, W/16]`` fp32."""
        for _, f in self.encoder_steps(width):
            x = f(x)
        return x

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """``[N, w, h, w']`` fp32 -> ``[N, 3, 16h, 16w']`` fp32 (width from the input)."""
        for _, f in self.decoder_steps(y.shape[1]):
            y = f(y)
        return y

    def forward(self, x: torch.Tensor, width=None, medians: torch.Tensor = None) -> torch.Tensor:
        """Encode, round (around ``medians`` ``[width]`` if given) and decode: ``x_hat``."""
        y = self.encode(x, width)
        m = 0.0 if medians is None else medians.view(1, -1, 1, 1)
        return self.decode(torch.round(y - m) + m)


if __name__ == "__main__":   # (run as a script it used to print nothing and exit 0)
    import sys
    print("bench/plain_slimcae.py is a library: run python bench/report.py", file=sys.stderr)
    sys.exit(2)
