"""Factorized entropy model (Balle et al. 2018 "deep factorized" density), one per width."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .parametrizers import lower_bound
from .._amp import no_autocast
from .._state import (WatchedAttributes, bump_generation, cached_on, describe_mismatch,
                      state_dict_mismatch)
from .._checks import as_flag, as_width, finite_real, is_int, not_a_tensor, width_list

#: training quantizations of the synthesis input (see :meth:`EntropyBottleneck.forward`)
QUANTIZATIONS = ("noise", "mixed")


def check_quantization(quantization: str) -> str:
    """``quantization`` if it is one of :data:`QUANTIZATIONS`, else ValueError naming them."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, "
                         f"got {quantization!r}")
    return quantization

_CDF_BUFFERS = ("_quantized_cdf", "_cdf_length", "_offset")


def is_table_key(key: str) -> bool:
    """Whether a SlimCAE / SlimCodec state_dict key names a CDF table buffer of its entropy
    model (``entropy_bottleneck. ... ._quantized_cdf`` / ``._cdf_length`` / ``._offset``)."""
    return key.startswith("entropy_bottleneck.") and key.rsplit(".", 1)[-1] in _CDF_BUFFERS


def state_dict_misfit(module: nn.Module, sd: Dict) -> Optional[str]:
    """Why the state dict ``sd`` does not load into ``module`` (other keys; an entry that is not
    a tensor; a tensor of another shape, the CDF tables excepted: they take the file's sizes),
    in a line (torch's own error lists every key: kilobytes for a foreign file); None when it
    fits. Shared by :func:`slimkernels.pretrained.load_model` and the trainer's resume."""
    missing, extra = state_dict_mismatch(module, sd)
    if missing or extra:
        return describe_mismatch(missing, extra, 2)
    mine = module.state_dict()
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor) or
           (not is_table_key(k) and tuple(v.shape) != tuple(mine[k].shape))]
    if not bad:
        return None
    k, v = bad[0], sd[bad[0]]
    what = (f"{k} is a {type(v).__name__}, not a tensor" if not isinstance(v, torch.Tensor) else
            f"{k} has shape {tuple(v.shape)}, the model {tuple(mine[k].shape)}")
    return what if len(bad) == 1 else f"{what} ({len(bad)} entries do not fit)"


class EntropyBottleneck(WatchedAttributes, nn.Module):
    """Per-channel factorized density with integer CDF tables for the range coder.

    Training adds uniform noise U(-0.5, 0.5); evaluation rounds around the channel medians:
    ``y_hat = round(y - median) + median``. The quantile parameters (learned through
    :meth:`loss`, the auxiliary loss) give the medians and the coded support. Everything runs in
    float32 (inputs in other dtypes are converted).

    Args:
        channels: C, the number of latent channels.
        filters: hidden sizes of the cumulative MLP (default ``(3, 3, 3)``).
        init_scale: initial support scale. tail_mass: probability mass outside the coded support.
        likelihood_bound: lower bound of the returned likelihoods.
        precision: bits of the integer CDFs (``1..16``; the coder's ``precision``).
    """

    def __init__(self, channels: int, filters: Sequence[int] = (3, 3, 3), init_scale: float = 10.0,
                 tail_mass: float = 1e-9, likelihood_bound: float = 1e-9, precision: int = 16):
        super().__init__()
        self.channels = as_width(channels, "EntropyBottleneck channels")
        if self.channels < 1:
            raise ValueError(f"EntropyBottleneck: channels must be >= 1, got {channels!r}")
        self.filters = tuple(width_list(filters, "EntropyBottleneck filters")) if filters else ()
        if any(f < 1 for f in self.filters):
            raise ValueError(f"EntropyBottleneck: filters must be >= 1, got {tuple(filters)}")
        where = "EntropyBottleneck"
        self.init_scale = finite_real(init_scale, "init_scale", where, 0.0)
        self.tail_mass = finite_real(tail_mass, "tail_mass", where, 0.0, 1.0)
        self.likelihood_bound = finite_real(likelihood_bound, "likelihood_bound", where, 0.0, 1.0,
                                            low_ok=True)
        if not is_int(precision) or not 1 <= precision <= 16:
            raise ValueError(f"EntropyBottleneck: precision must be an int in 1..16 (the "
                             f"coder's CDF bits), got {precision!r}")
        self.precision = int(precision)
        dims = (1,) + self.filters + (1,)
        scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            try:
                init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            except OverflowError:   # (exp of > 709: init_scale ** (1 / layers) below ~1/700)
                raise ValueError(f"EntropyBottleneck: init_scale {init_scale!r} is too small for "
                                 f"{len(self.filters) + 1} layers (its initial weights overflow "
                                 f"float64); use a value near the latent's spread, e.g. the "
                                 f"default 10") from None
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        q = torch.tensor([-self.init_scale, 0.0, self.init_scale])
        self.quantiles = nn.Parameter(q.repeat(channels, 1, 1))
        t = math.log(2.0 / self.tail_mass - 1.0)
        self.register_buffer("target", torch.tensor([-t, 0.0, t]))
        self.register_buffer("_offset", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("_quantized_cdf", torch.zeros(0, 0, dtype=torch.int32))
        self.register_buffer("_cdf_length", torch.zeros(0, dtype=torch.int32))

    # -- density ---------------------------------------------------------------------------
    def _logits_cumulative(self, inputs: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        # float32 whatever the module's dtype (a model converted with .double() / .half()
        # mixed dtypes in the matmul): .float() is free for float32 parameters; and whatever an
        # enclosing autocast says (loss() / update() under bf16 autocast ran the matmuls in bf16:
        # other CDF tables, hence another model id, and +0.16 % rate at w=192)
        with no_autocast(inputs.device.type):
            return self._logits_fp32(inputs, stop_gradient)

    def _logits_fp32(self, inputs: torch.Tensor, stop_gradient: bool) -> torch.Tensor:
        logits = inputs.float()
        for i in range(len(self.filters) + 1):
            m = F.softplus(self.matrices[i].float())
            b = self.biases[i].float()
            if stop_gradient:
                m, b = m.detach(), b.detach()
            logits = torch.matmul(m, logits) + b
            if i < len(self.filters):
                f = torch.tanh(self.factors[i].float())
                if stop_gradient:
                    f = f.detach()
                logits = logits + f * torch.tanh(logits)
        return logits

    def _likelihood(self, values: torch.Tensor) -> torch.Tensor:
        """``values``: ``[C, 1, M]`` float32 -> probability of each unit bin, same shape."""
        lower = self._logits_cumulative(values - 0.5, stop_gradient=False)
        upper = self._logits_cumulative(values + 0.5, stop_gradient=False)
        sign = -torch.sign(lower + upper).detach()
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def medians(self) -> torch.Tensor:
        """``[C]`` float32 channel medians (learned quantiles; float32 whatever the module's
        dtype)."""
        return self.quantiles[:, 0, 1].detach().float()

    def coding_medians(self) -> torch.Tensor:
        """The medians as the CPU coding kernels read them: a contiguous float32 ``[C]`` CPU
        tensor, cached until ``quantiles`` changes (version counter, identity, storage; call
        :meth:`clear_cache` after writes through ``.data``). Do not modify it."""
        def build():
            with torch.no_grad():
                return self.medians().to("cpu", torch.float32).contiguous()
        return cached_on(self, "_medians_cache", (self.quantiles,), build)

    def clear_cache(self) -> None:
        """Drop the cached :meth:`coding_medians` and :meth:`cdf_tables` (a build in flight in
        another thread is not kept either)."""
        bump_generation()
        self.__dict__.pop("_medians_cache", None)
        self.__dict__.pop("_tables_cache", None)

    def loss(self) -> torch.Tensor:
        """Auxiliary loss that fits the quantiles (0-dim float32); optimize it separately."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target.float()).sum()

    def forward(self, y: torch.Tensor, training: Optional[bool] = None,
                quantization: str = "noise") -> Tuple[torch.Tensor, torch.Tensor]:
        """Quantize ``y`` and return ``(y_hat, likelihoods)``.

        Args:
            y: ``[N, C, H, W]`` latent (any float dtype; computed in float32).
            training: noise (True) or median rounding (False); default ``self.training``.
            quantization: in training, what ``y_hat`` (the synthesis input) is: ``"noise"``
                (default) ``y + U(-0.5, 0.5)``; ``"mixed"`` the median rounding with a
                straight-through gradient (``d y_hat / d y = 1``), while the likelihoods are
                still those of the noisy values (Minnen & Singh 2020: the decoder trains on what
                it decodes). Ignored in evaluation (always rounding).
        Returns:
            ``y_hat`` and ``likelihoods``, both ``[N, C, H, W]`` float32.
        """
        self._check_latent(y, "forward")
        check_quantization(quantization)
        training = self.training if training is None else \
            as_flag(training, "training", f"EntropyBottleneck({self.channels})")
        with no_autocast(y.device.type):
            y = y.float()
            if training:   # (the noise drawn in NCHW order whatever y's layout: the same
                # seed gives the same noise on every path, channels_last kernels or not; out of
                # place, so that torch.func.vmap(randomness="different") draws it per sample)
                y_hat = y + (torch.rand(y.shape, dtype=y.dtype, device=y.device) - 0.5)
            else:
                y_hat = self._round(y)
            values = y_hat.permute(1, 0, 2, 3).reshape(self.channels, 1, -1)
            lik = self._likelihood(values)
            lik = lower_bound(lik, torch.tensor(self.likelihood_bound, device=lik.device))
            lik = lik.reshape(self.channels, y.shape[0], y.shape[2], y.shape[3]).permute(1, 0, 2, 3)
            if training and quantization == "mixed":
                y_hat = y + (self._round(y) - y).detach()
        return y_hat, lik

    def _round(self, y: torch.Tensor) -> torch.Tensor:
        # float32 [N, C, H, W] -> rounded around the channel medians (what decoding sees)
        m = self.medians().view(1, -1, 1, 1)
        return torch.round(y - m) + m

    # -- integer tables for coding -----------------------------------------------------------
    @torch.no_grad()
    def update(self, force: bool = True) -> bool:
        """Build the integer CDF tables from the current density (call after training).

        The tables (``_quantized_cdf`` int32 ``[C, L_max]``, ``_cdf_length`` and ``_offset`` int32
        ``[C]``) live in the state_dict, so decoding depends on no float arithmetic.

        Args:
            force: rebuild the tables even where they exist (default); False builds them only
                where one of the three is missing (e.g. after loading a state_dict without them).

        Returns True when the tables were (re)built (False: ``force=False`` found them all).
        ValueError when ``force`` is not True / False (a string such as ``"no"`` was truthy).
        """
        force = as_flag(force, "force", "EntropyBottleneck.update")
        if self.has_tables() and not force:
            return False
        with torch.inference_mode(False), torch.no_grad():
            # (tables written under an outer torch.inference_mode() were inference tensors: no
            # version counter, so the caches keyed by the model's state missed at every call;
            # leaving it turns gradients back on: no_grad again)
            return self._build_tables()

    def _build_tables(self) -> bool:
        from .. import coding

        if not torch.isfinite(self.quantiles).all():
            bad = int((~torch.isfinite(self.quantiles)).any(-1).any(-1).nonzero()[0])
            raise ValueError(f"EntropyBottleneck.update: the quantiles of channel {bad} are not "
                             f"finite ({self.quantiles[bad, 0].tolist()}): the model's training "
                             "diverged; load an earlier checkpoint")
        med = self.medians()
        minima = torch.ceil(med - self.quantiles[:, 0, 0]).clamp(min=0).to(torch.int64)
        maxima = torch.ceil(self.quantiles[:, 0, 2] - med).clamp(min=0).to(torch.int64)
        pmf_start = med - minima
        pmf_length = maxima + minima + 1
        L = int(pmf_length.max())
        if L + 1 > 2 ** self.precision:   # (before the [C, 1, L] samples are allocated)
            c = int(pmf_length.argmax())
            raise ValueError(
                f"EntropyBottleneck.update: channel {c}'s quantiles "
                f"{self.quantiles[c, 0].tolist()} span {L} integers, more than the "
                f"{2 ** self.precision - 1} a {self.precision}-bit CDF can give a nonzero "
                "frequency each" + (": raise precision (at most 16)" if self.precision < 16
                                    else ": the quantiles are implausible (train the auxiliary "
                                    "loss, or check the model)"))
        samples = torch.arange(L, device=med.device, dtype=torch.float32)
        samples = samples[None, :] + pmf_start[:, None]
        samples = samples[:, None, :]
        lower = self._logits_cumulative(samples - 0.5, stop_gradient=True)
        upper = self._logits_cumulative(samples + 0.5, stop_gradient=True)
        sign = -torch.sign(lower + upper)
        pmf = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))[:, 0, :]
        tail = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])
        if not (torch.isfinite(pmf).all() and torch.isfinite(tail).all()):
            raise ValueError("EntropyBottleneck.update: the density is not finite (NaN / inf "
                             "in the cumulative MLP's parameters?): the model's training "
                             "diverged; load an earlier checkpoint")
        pmf64 = pmf.double().cpu().numpy()
        tail64 = tail.double().cpu().numpy()[:, 0]
        lengths = pmf_length.cpu().numpy()
        cdfs = np.zeros((self.channels, L + 2), dtype=np.int32)
        for c in range(self.channels):
            n = int(lengths[c])
            p = np.concatenate([pmf64[c, :n], tail64[c:c + 1]])
            cdf = coding.pmf_to_quantized_cdf(p, precision=self.precision)
            cdfs[c, :len(cdf)] = cdf
        dev = self.quantiles.device
        self._quantized_cdf = torch.from_numpy(cdfs).to(dev)
        self._cdf_length = (pmf_length + 2).to(torch.int32).to(dev)
        self._offset = (-minima).to(torch.int32).to(dev)
        return True

    def has_tables(self) -> bool:
        """True once :meth:`update` has built (or a state_dict has loaded) the CDF tables: all
        three, one row each per channel (a state_dict of some of them, loaded with
        ``strict=False``, is not a set of tables)."""
        c = self.channels
        return self._cdf_length.numel() == c and self._offset.numel() == c and \
            self._quantized_cdf.dim() == 2 and self._quantized_cdf.shape[0] == c

    def cdf_tables(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The coder's tables as CPU int32 numpy arrays: ``(cdfs [C, L_max], cdf_lengths [C],
        offsets [C])``, for :func:`slimkernels.coding.encode` / ``decode`` with ``precision =
        self.precision`` (the CDF of channel ``c`` is row ``c``).

        The arrays are cached until a table buffer changes (as :meth:`coding_medians`); they
        are views of the buffers when these are on the CPU: do not modify them.

        Raises:
            RuntimeError: no tables yet (call :meth:`update`).
        """
        bufs = (self._quantized_cdf, self._cdf_length, self._offset)

        def build():
            if not self.has_tables():
                raise RuntimeError("the entropy model has no CDF tables: call update() first")
            return tuple(b.detach().cpu().numpy() for b in bufs)
        return cached_on(self, "_tables_cache", bufs, build)

    def quantize_symbols(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` ``[N, C, H, W]`` float -> int32 symbols ``round(y - median)``.

        Raises:
            ValueError: ``y`` is not ``[N, C, H, W]`` with this model's ``C`` channels; ``y``
                has NaN, inf or values whose symbol is beyond the int32 range (they would
                become INT32_MIN and be coded as such)."""
        self._check_latent(y, "quantize_symbols")
        with no_autocast(y.device.type):
            m = self.medians().view(1, -1, 1, 1)
            d = torch.round(y.float() - m)
            if not bool(((d.abs() < 2.0 ** 31)).all()):   # NaN compares False
                raise ValueError("EntropyBottleneck.quantize_symbols: y has NaN, inf or values "
                                 "beyond the int32 range around the medians: not a latent "
                                 "this model can code")
            return d.to(torch.int32)

    def dequantize_symbols(self, s: torch.Tensor) -> torch.Tensor:
        """int32 symbols ``[N, C, H, W]`` -> float32 ``y_hat = s + median``.

        Raises:
            ValueError: ``s`` is not ``[N, C, H, W]`` with this model's ``C`` channels."""
        self._check_latent(s, "dequantize_symbols")
        return s.float() + self.medians().view(1, -1, 1, 1)

    def _check_latent(self, t, what: str) -> None:
        # (a 5-channel latent broadcast into a raw RuntimeError; a 3-D one was taken as
        # [C, H, W] with C read as the batch)
        if not isinstance(t, torch.Tensor):
            raise not_a_tensor(t, f"EntropyBottleneck({self.channels}).{what}",
                               f"[N, {self.channels}, H, W]")
        if t.dim() != 4 or t.shape[1] != self.channels:
            raise ValueError(f"EntropyBottleneck({self.channels}).{what} expects "
                             f"[N, {self.channels}, H, W], got "
                             f"{tuple(getattr(t, 'shape', ())) or type(t).__name__}")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the CDF tables change shape with update(): take the loaded shapes
        self._check_loaded_tables(state_dict, prefix)
        for name in _CDF_BUFFERS:
            key = prefix + name
            if key in state_dict:
                setattr(self, name, state_dict[key].detach().to(self.quantiles.device, copy=True))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_loaded_tables(self, state_dict, prefix: str) -> None:
        """ValueError (naming the key) for CDF tables in ``state_dict`` that this model cannot
        code with: not integer tensors, of shapes that do not fit each other or this model's
        channels, or with contents the coder refuses (the tables of a damaged file loaded and
        failed only at ``compress``, with the coder's messages). Empty tables (a model saved
        before :meth:`update`) are fine."""
        got = {n: state_dict[prefix + n] for n in _CDF_BUFFERS if prefix + n in state_dict}
        todo = "a damaged file: load it without its CDF tables and call update()"
        for n, t in got.items():
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or \
                    t.dtype == torch.bool:
                what = f"a {t.dtype} tensor" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{prefix}{n}: a CDF table must be an integer tensor, got "
                                 f"{what}: {todo}")
        if len(got) < len(_CDF_BUFFERS):
            return   # (a partial dict: strict loading names the missing keys)
        cdf, length, offset = (got[n] for n in _CDF_BUFFERS)
        rows = cdf.shape[0] if cdf.dim() == 2 else -1
        if cdf.numel() == 0 and length.numel() == 0 and offset.numel() == 0:
            return
        if rows != self.channels or tuple(length.shape) != (rows,) or \
                tuple(offset.shape) != (rows,):
            raise ValueError(f"{prefix}_quantized_cdf / _cdf_length / _offset have shapes "
                             f"{tuple(cdf.shape)} / {tuple(length.shape)} / {tuple(offset.shape)}, "
                             f"not [{self.channels}, L] / [{self.channels}] / [{self.channels}] "
                             f"for this model's {self.channels} channels: saved from a model of "
                             f"other widths (build this one with the widths it was saved with), "
                             f"or {todo}")
        from .. import coding
        try:
            coding.validate_tables(cdf.detach().cpu().numpy(), length.detach().cpu().numpy(),
                                   offset.detach().cpu().numpy(), precision=self.precision)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{prefix}_quantized_cdf: the CDF tables are not valid at this "
                             f"model's precision {self.precision} ({e}): saved from a model of "
                             f"another precision (build this one with the precision it was saved "
                             f"with), or {todo}") from None


class SlimEntropyBottleneck(WatchedAttributes, nn.Module):
    """One :class:`EntropyBottleneck` per width (not sliced): ``bottlenecks.k`` has ``widths[k]``
    channels; the latent's channel count picks it.
    """

    def __init__(self, widths: Sequence[int], **kwargs):
        super().__init__()
        self.widths = width_list(widths, type(self).__name__)
        if len(set(self.widths)) != len(self.widths):
            raise ValueError(f"widths must be distinct and non-empty, got {list(widths)}")
        self.bottlenecks = nn.ModuleList(EntropyBottleneck(w, **kwargs) for w in self.widths)

    def for_width(self, width: int) -> EntropyBottleneck:
        """The bottleneck of ``width`` (ValueError if it is not one of ``widths``)."""
        w = as_width(width, type(self).__name__)
        if w not in self.widths:
            raise ValueError(f"no entropy model for width {width}: widths are {self.widths}")
        return self.bottlenecks[self.widths.index(w)]

    def forward(self, y: torch.Tensor, training: Optional[bool] = None,
                quantization: str = "noise") -> Tuple[torch.Tensor, torch.Tensor]:
        """``y``: ``[N, w, H, W]`` -> ``(y_hat, likelihoods)`` float32 of the same shape;
        ``training`` and ``quantization`` as in :meth:`EntropyBottleneck.forward`."""
        if not isinstance(y, torch.Tensor):
            raise not_a_tensor(y, type(self).__name__, "latent [N, width, H, W]")
        if y.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects a latent [N, width, H, W], got "
                             f"{tuple(getattr(y, 'shape', ())) or type(y).__name__}")
        return self.for_width(y.shape[1])(y, training, quantization)

    def loss(self) -> torch.Tensor:
        """Sum of the auxiliary losses of every width (0-dim float32)."""
        return sum(b.loss() for b in self.bottlenecks)

    def update(self, force: bool = True) -> bool:
        """Build the CDF tables of every width; see :meth:`EntropyBottleneck.update` (``force``:
        False builds only the widths without tables). Returns True when some width's tables
        were (re)built. ValueError when ``force`` is not True / False."""
        force = as_flag(force, "force", f"{type(self).__name__}.update")
        return any([b.update(force) for b in self.bottlenecks])
