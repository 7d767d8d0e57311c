"""SlimCAE: one compressive autoencoder holding several sub-networks of decreasing width."""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from ..nn import SlimConv2d, SlimConvTranspose2d, SlimEntropyBottleneck, make_gdn

DEFAULT_WIDTHS = (192, 144, 96, 72, 48)


class SlimSequential(nn.Sequential):
    """``nn.Sequential`` whose ``forward(x, width)`` hands the active width to every layer."""

    def forward(self, x: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:  # noqa: D401
        for layer in self:
            # a layer with a fixed output size (the last decoder conv) takes no width
            x = layer(x, width if getattr(layer, "slim_output", True) else None)
        return x

def _model_id(model: "SlimCAE") -> bytes:
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(model.config(), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()[:16]


def _indexes(width: int, h: int, w: int):
    import numpy as np
    return np.ascontiguousarray(
        np.broadcast_to(np.arange(width, dtype=np.int32)[None, :, None, None], (1, width, h, w)))


class SlimCAE(nn.Module):
    """The SlimCAE architecture of the official code (SLIMCAE.md).

    Encoder ``g_a``: conv 9x9/4 -> GDN -> conv 5x5/2 -> GDN -> conv 5x5/2 (no bias) -> GDN.
    Decoder ``g_s``: IGDN -> tconv 5x5/2 -> IGDN -> tconv 5x5/2 -> IGDN -> tconv 9x9/4 -> 3.
    Width ``w`` uses the first ``w`` channels of every hidden layer and its own entropy model.

    Args:
        widths: the sub-network widths (default 192, 144, 96, 72, 48); the largest is the full size.
        gdn: ``"switch"`` (one GDN per width, default, as released), ``"slim"`` or ``"slim+"``.
    """

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, gdn: str = "switch"):
        super().__init__()
        widths = sorted({int(w) for w in widths}, reverse=True)
        if not widths or widths[-1] < 1:
            raise ValueError(f"widths must be positive integers, got {widths}")
        self.widths = widths
        self.gdn_variant = gdn
        N = widths[0]
        self.g_a = SlimSequential(
            SlimConv2d(3, N, 9, stride=4, padding=4, widths=widths),
            make_gdn(gdn, widths),
            SlimConv2d(N, N, 5, stride=2, padding=2, widths=widths),
            make_gdn(gdn, widths),
            SlimConv2d(N, N, 5, stride=2, padding=2, bias=False, widths=widths),
            make_gdn(gdn, widths),
        )
        self.g_s = SlimSequential(
            make_gdn(gdn, widths, inverse=True),
            SlimConvTranspose2d(N, N, 5, stride=2, padding=2, output_padding=1, widths=widths),
            make_gdn(gdn, widths, inverse=True),
            SlimConvTranspose2d(N, N, 5, stride=2, padding=2, output_padding=1, widths=widths),
            make_gdn(gdn, widths, inverse=True),
            SlimConvTranspose2d(N, 3, 9, stride=4, padding=4, output_padding=3),
        )
        self.entropy_bottleneck = SlimEntropyBottleneck(widths)

    def config(self) -> Dict:
        """The constructor arguments, enough to rebuild the architecture."""
        return {"widths": list(self.widths), "gdn": self.gdn_variant}

    def _width(self, width: Optional[int]) -> int:
        if width is None:
            return self.widths[0]
        if int(width) not in self.widths:
            raise ValueError(f"width {width} is not one of this model's widths {self.widths}")
        return int(width)

    def encode(self, x: torch.Tensor, width: Optional[int] = None) -> torch.Tensor:
        """Analysis transform: ``[N, 3, H, W]`` -> latent ``[N, width, H/16, W/16]``."""
        return self.g_a(x, self._width(width))

    def decode(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Synthesis transform: ``[N, w, h, w']`` -> ``[N, 3, 16h, 16w']`` (width from the input)."""
        return self.g_s(y_hat, self._width(y_hat.shape[1]))

    def forward(self, x: torch.Tensor, width: Optional[int] = None) -> Dict:
        """Run sub-network ``width`` on ``x`` ``[N, 3, H, W]`` (H, W multiples of 16).

        Returns:
            ``{"x_hat": [N, 3, H, W], "likelihoods": {"y": [N, width, H/16, W/16] float32}}``.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"SlimCAE expects RGB images [N, 3, H, W], got {tuple(x.shape)}")
        y = self.encode(x, width)
        y_hat, lik = self.entropy_bottleneck(y)
        x_hat = self.decode(y_hat.to(y.dtype) if y.dtype != torch.float32 else y_hat)
        return {"x_hat": x_hat, "likelihoods": {"y": lik}}

    def aux_loss(self) -> torch.Tensor:
        """The entropy models' auxiliary (quantile) loss, summed over widths."""
        return self.entropy_bottleneck.loss()

    def update(self, force: bool = True) -> bool:
        """Build the integer CDF tables of every width (call before compress)."""
        return self.entropy_bottleneck.update(force)

    # -- coding ------------------------------------------------------------------------------
    def model_id(self) -> bytes:
        """16-byte identifier of this model: SHA-256 of its config and every state_dict tensor.

        Cached until a parameter or buffer changes (tracked by the tensors' version counters).
        """
        key = tuple((id(t), t._version) for t in self.state_dict(keep_vars=True).values())
        cache = getattr(self, "_id_cache", None)
        if cache is None or cache[0] != key:
            cache = (key, _model_id(self))
            object.__setattr__(self, "_id_cache", cache)
        return cache[1]


    @torch.no_grad()
    def compress(self, x: torch.Tensor, width: Optional[int] = None, *, precision: str = "fp32",
                  streams: int = 1, metadata: Optional[Dict[str, bytes]] = None) -> bytes:
        """Compress one image to a ``.slim`` byte string.

        Args:
            x: ``[1, 3, H, W]`` (or ``[3, H, W]``) float in [0, 1], any H, W >= 1 (padded to a
                multiple of 16 by edge replication, cropped back on decoding).
            width: sub-network width (default: the widest).
            precision: ``"fp32"`` or ``"bf16"`` (autocast for the transforms; the entropy model is fp32).
            streams: coder substreams (decoded in parallel threads).
            metadata: custom ``str -> bytes`` fields stored in the container.

        Returns:
            bytes of the ``.slim`` format (see :mod:`slimkernels.container`).
        """
        from .. import coding, container

        width = self._width(width)
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
            raise ValueError(f"compress expects one RGB image [1, 3, H, W], got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"compress expects a float image in [0, 1], got dtype {x.dtype}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        eb = self.entropy_bottleneck.for_width(width)
        if not eb.has_tables():
            raise RuntimeError("the entropy model has no CDF tables: call model.update() first")
        H, W = x.shape[-2:]
        ph, pw = (-H) % 16, (-W) % 16
        xp = torch.nn.functional.pad(x.float(), (0, pw, 0, ph), mode="replicate") if ph or pw else x
        if next(self.parameters()).is_contiguous(memory_format=torch.channels_last):
            xp = xp.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=xp.device.type, dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            y = self.encode(xp.to(next(self.parameters()).device), width)
        sym = eb.quantize_symbols(y).cpu().contiguous()
        _, C, h, w = sym.shape
        payload = coding.encode(sym.numpy(), _indexes(C, h, w), eb._quantized_cdf.cpu().numpy(),
                                eb._cdf_length.cpu().numpy(), eb._offset.cpu().numpy(),
                                precision=eb.precision, streams=streams)
        f = container.SlimFile(model_id=self.model_id(), width=width, height=H, img_width=W,
                               streams=streams, payload=payload, metadata=dict(metadata or {}))
        return container.pack(f)


    @torch.no_grad()
    def decompress_latent(self, data: bytes):
        """Parse ``data`` and decode its symbols: ``(SlimFile, symbols int32 [1, w, h, w'])``."""
        from .. import coding, container

        f = container.unpack(data)
        mine = self.model_id()
        if f.model_id != mine:
            raise container.SlimFormatError(
                f"this file was written with a different model (id {f.model_id.hex()}); this model's "
                f"id is {mine.hex()}: decode it with the model that wrote it")
        if f.width not in self.widths:
            raise container.SlimFormatError(f"the file's width {f.width} is not one of this model's "
                                            f"widths {self.widths}")
        eb = self.entropy_bottleneck.for_width(f.width)
        h, w = (f.height + 15) // 16, (f.img_width + 15) // 16
        sym = coding.decode(f.payload, _indexes(f.width, h, w), eb._quantized_cdf.cpu().numpy(),
                            eb._cdf_length.cpu().numpy(), eb._offset.cpu().numpy(),
                            precision=eb.precision)
        return f, torch.from_numpy(sym)


    @torch.no_grad()
    def decompress(self, data: bytes, *, precision: str = "fp32") -> torch.Tensor:
        """Decode a ``.slim`` byte string to an image ``[1, 3, H, W]`` float32 in [0, 1].

        Raises:
            slimkernels.container.SlimFormatError: corrupt, truncated, newer version or another
                model's file (the message says which).
        """
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        f, sym = self.decompress_latent(data)
        eb = self.entropy_bottleneck.for_width(f.width)
        dev = next(self.parameters()).device
        y_hat = eb.dequantize_symbols(sym.to(dev))
        if next(self.parameters()).is_contiguous(memory_format=torch.channels_last):
            y_hat = y_hat.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            x_hat = self.decode(y_hat)
        return x_hat.float()[..., :f.height, :f.img_width].clamp_(0, 1)
