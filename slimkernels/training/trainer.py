"""Joint training of every width of a SlimCAE, with checkpoint/resume and lambda scheduling."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import numbers
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from .._checks import check_image_tensor, is_int, too_many_threads, width_list
from .._device import check_device, cli_device
from .._state import first_non_finite
from ..codec import native_bf16, pixel_values_outside
from ..io import (MissingFileError, atomic_torch_save, load_torch_file, missing_folders,
                  remove_empty_folders, torch_archive_problem)
from ..ops.image_io import value_range
from ..models import SlimCAE
from ..models.slimcae import DEFAULT_WIDTHS
from ..nn.entropy import QUANTIZATIONS, check_quantization, is_table_key, state_dict_misfit
from ..nn.gdn import GDN_LEGACY_NAMES, GDN_VARIANTS
from ..ops.gdn import compiled_training
from .data import CropSampler, center_crops, check_seed, list_images, load_rgb, split_train_val
from .lambdas import PREDEFINED_LAMBDAS, LambdaScheduler, check_lambdas


def _opt(default, help: str, factory=None, auto_bool: bool = False, arg_type=None,
         choices=None):
    """A :class:`TrainConfig` field with its command-line help (``metadata["help"]``);
    ``auto_bool``: a switch whose default ``None`` means "decide from the device";
    ``arg_type``: the command-line type of an option whose default is None (a list's items),
    or of a plain option (a checking argparse type); ``choices``: the values the command line
    accepts."""
    meta = {"help": help, "auto_bool": auto_bool, "arg_type": arg_type, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in every checkpoint. Each field is a
    ``--option`` of ``python/train.py`` / ``slimkernels train`` (its help: ``metadata["help"]``)."""
    data: str = _opt("../shared/data/train", "folder of training images (PNG/JPEG)")
    out: str = _opt("runs/slimcae", "run folder (checkpoint.pt, log.jsonl); a checkpoint there is "
                    "resumed")
    widths: List[int] = _opt(None, "sub-network widths (latent channels), widest first",
                             factory=lambda: list(DEFAULT_WIDTHS))
    gdn: str = _opt("switch", "GDN variant: switch (SwitchGDN), slim (SlimGDN) or slim+ (SlimGDN+; "
                    "slimplus: its earlier spelling, for runs that used it)",
                    choices=GDN_VARIANTS + tuple(GDN_LEGACY_NAMES))
    lambdas: Optional[List[float]] = _opt(
        None, "rate-distortion lambda of each width (loss = bpp + lambda * 255^2 * MSE). Unset: "
        "the predefined ladder 0.0315 0.0157 0.00787 0.00394 0.00197; with --schedule all "
        "equal to 4000 / 255^2 (~0.0615), where the paper's search starts; a resumed run: "
        "those it started with", arg_type=float)
    batch: int = _opt(8, "images per step")
    crop: int = _opt(128, "random crop size (pixels) of the first steps")
    crop_large: int = _opt(256, "crop size after --large-after steps")
    large_after: int = _opt(10 ** 9, "switch to --crop-large after this many steps")
    steps: int = _opt(1000, "train until this global step (a resumed run continues to it)")
    lr: float = _opt(1e-4, "Adam learning rate of the transforms and the entropy models")
    aux_lr: float = _opt(1e-3, "Adam learning rate of the entropy models' quantiles (aux loss)")
    clip: float = _opt(1.0, "gradient-norm clipping (0: off)")
    ema: float = _opt(0.999, "decay of a moving average of the weights (0: off); validation, "
                      "the lambda scheduler and the export use it. Warmed up: step t (from 0) "
                      "averages with decay min(ema, (1 + t) / (10 + t)), so that the first "
                      "thousands of steps are not dominated by the random initial weights")
    bf16: Optional[bool] = _opt(None, "bf16 autocast for the transforms; the entropy model and "
                                "the loss stay fp32. Unset: on where the device computes bf16 "
                                "natively (CPU with AMX-BF16 or AVX512-BF16, CUDA sm80+), off "
                                "elsewhere (on a CPU without AVX-512 the ops compute bf16 in "
                                "fp32 and round: no gain over fp32)", auto_bool=True)
    quantization: str = _opt("noise", "what the synthesis trains on: noise (y + U(-0.5, 0.5), "
                                     "Yang et al. 2021) or mixed (the rounded latent, "
                                     "straight-through "
                                     "gradient; the rate term keeps the noise)",
                             choices=list(QUANTIZATIONS))
    compile_gdn: bool = _opt(True, "CPU + bf16: GDN's autograd path through torch.compile")
    channels_last: bool = _opt(True, "channels_last activations and weights")
    device: str = _opt("cpu", "cpu, cuda or cuda:N (torchrun sets the rank's GPU)",
                       arg_type=cli_device)
    threads: int = _opt(0, "torch threads (0: leave as is)")
    seed: int = _opt(0, "random seed (crops, initialization)")
    sample_by_area: bool = _opt(False, "pick crops' images by pixel count (every pixel equally "
                                       "likely) instead of uniformly over images")
    val_every: int = _opt(1000, "validate every N steps (held-out training images, never Kodak)")
    val_size: int = _opt(256, "center-crop size of the validation images")
    val_split: int = _opt(20, "every N-th training image is held out for validation")
    ckpt_every_s: float = _opt(600.0, "save the checkpoint at least this often (seconds)")
    schedule: bool = _opt(False, "lambda scheduling (Yang et al. 2021): scale the narrower widths' "
                          "lambdas while the RD chord slope keeps falling; the widest never "
                          "changes")
    schedule_start: Optional[int] = _opt(
        None, "first scheduler validation at this step (the search's first reference slope). "
        "Unset: half of --steps of the run's first invocation, which a resume keeps (the paper "
        "trains with equal lambdas first, then searches)",
        arg_type=int)
    schedule_steps: int = _opt(2000, "fine-tuning steps between lambda updates (T)")
    init: str = _opt("", "weights to start from (a state_dict or a checkpoint)")
    init_continue: bool = _opt(False, "with --init: continue its step count and lambdas")
    progress: bool = _opt(True, "progress bar on stderr")

    def check(self) -> None:
        """ValueError naming the first option out of range (``--crop 7`` would otherwise fail
        deep inside the model, ``--crop`` larger than every image would loop forever)."""
        for f in fields(self):   # (annotations are strings here: from __future__ annotations)
            v = getattr(self, f.name)
            if f.type in ("bool", "Optional[bool]") and not (
                    isinstance(v, bool) or (v is None and f.type != "bool")):
                raise ValueError(f"{f.name}={v!r}: must be True or False")   # (bool("no"))
            if f.type == "int" and not is_int(v):
                raise ValueError(f"--{f.name.replace('_', '-')} {v!r}: must be an int")
            if f.type == "float" and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise ValueError(f"--{f.name.replace('_', '-')} {v!r}: must be a number")
        s = SlimCAE.downsampling
        for name in ("crop", "crop_large", "val_size"):
            v = getattr(self, name)
            if v < s or v % s:
                raise ValueError(f"--{name.replace('_', '-')} {v}: must be a positive multiple "
                                 f"of {s} (the model's total stride)")
        if self.schedule_start is not None and not is_int(self.schedule_start):
            raise ValueError(f"--schedule-start {self.schedule_start!r}: must be an int")
        for name, lo in (("batch", 1), ("steps", 0), ("val_every", 0), ("val_split", 2),
                         ("schedule_steps", 1), ("threads", 0), ("large_after", 0),
                         ("schedule_start", 0)):
            if getattr(self, name) is not None and getattr(self, name) < lo:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be "
                                 f">= {lo}")
        if too_many_threads(self.threads):
            raise ValueError(too_many_threads(self.threads))
        if not self.ckpt_every_s > 0:
            raise ValueError(f"--ckpt-every-s {self.ckpt_every_s}: must be > 0")
        if not (0 < self.lr < math.inf and 0 < self.aux_lr < math.inf):
            raise ValueError(f"--lr {self.lr} / --aux-lr {self.aux_lr}: must be finite and > 0")
        if not self.clip >= 0:
            raise ValueError(f"--clip {self.clip}: must be >= 0 (0: off)")
        if not 0 <= self.ema < 1:
            raise ValueError(f"--ema {self.ema}: must be in [0, 1) (0: off)")
        check_seed(self.seed, "--seed")   # (torch: "Overflow when unpacking long long")
        for name in ("widths", "lambdas"):   # (a numpy array: "truth value ... is ambiguous")
            v = getattr(self, name)
            if v is not None and (isinstance(v, (str, bytes, dict)) or not hasattr(v, "__iter__")):
                raise ValueError(f"--{name} {v!r}: must be a list (one entry per width)")
        widths = list(self.widths)
        if not widths or any(not is_int(w) or w < 1 for w in widths):
            raise ValueError(f"--widths {widths}: must be positive ints")
        if widths != sorted(set(widths), reverse=True):
            # (the lambdas pair with the widths by position, the model sorts its widths: out of
            # order, a width trained with another's lambda; the scheduler's "widest" was not)
            raise ValueError(f"--widths {widths}: must be distinct and widest first "
                             f"(e.g. {sorted(set(widths), reverse=True)}), each lambda "
                             f"paired with the width at its place")
        if self.lambdas is not None and any(
                isinstance(lam, bool) or not isinstance(lam, numbers.Real) or
                not 0 < lam < math.inf for lam in self.lambdas):
            raise ValueError(f"--lambdas {self.lambdas}: must be finite and > 0 (numbers)")
        if self.init_continue and not self.init:
            raise ValueError("--init-continue continues the step count and lambdas of an --init "
                             "file: give --init MODEL (or leave out --init-continue)")

    def default_lambdas(self) -> List[float]:
        """The lambdas of a new run when ``lambdas`` is unset: all equal to
        :data:`SCHEDULE_START_LAMBDA` with ``schedule`` (the paper's search starts from equal
        lambdas), else :data:`PREDEFINED_LAMBDAS` (the first ``len(widths)``; a longer width
        list repeats the last one halved)."""
        k = len(self.widths)
        if self.schedule:
            return [SCHEDULE_START_LAMBDA] * k
        out = list(PREDEFINED_LAMBDAS[:k])
        while len(out) < k:
            out.append(out[-1] / 2)
        return out


#: The paper's starting lambda of every width for the lambda search (4000 on the [0, 1]-MSE
#: scale of the official code, SLIMCAE.md) in the 255^2 convention.
SCHEDULE_START_LAMBDA = 4000 / 255 ** 2

#: What a run folder's checkpoint must share with the options that resume it.
_RUN_IDENTITY = ("widths", "gdn", "lambdas")


def _check_same_run(saved: Optional[Dict], cfg: "TrainConfig", path: str) -> None:
    """ValueError when the checkpoint at ``path`` was written by a run with other widths, GDN
    or (initial) lambdas than ``cfg`` (a resume would load other shapes, or train with lambdas
    that the command line does not say)."""
    if not isinstance(saved, dict):
        return

    def same(a, b):
        return list(a) == list(b) if isinstance(a, (list, tuple)) else a == b
    diff = [f"--{k} {saved[k]!r} (now {getattr(cfg, k)!r})" for k in _RUN_IDENTITY
            if k in saved and getattr(cfg, k) is not None and saved[k] is not None
            and not same(saved[k], getattr(cfg, k))]
    if diff:
        raise ValueError(f"{path} belongs to a run started with {', '.join(diff)}: resume it "
                         f"with the same options, or choose another --out for a new run")


def _same_path(a: str, b: str) -> bool:
    return a == b or os.path.realpath(a) == os.path.realpath(b)


#: Options :func:`_resume_differences` does not report: checked equal elsewhere (widths, gdn,
#: lambdas, init), or about this invocation rather than the run's training (where it is
#: written, how far it goes, threads, progress bar, checkpoint period).
_RESUME_QUIET = {"out", "widths", "gdn", "lambdas", "steps", "threads", "progress",
                 "ckpt_every_s", "init", "init_continue"}


def _resume_differences(saved: Dict, cfg: "TrainConfig", world: int = 1,
                        derived: Sequence[str] = ()) -> List[str]:
    """``--option saved -> now`` for each training option of ``cfg`` that differs from the
    saved run's config ``saved`` (a resume applies them from its first step; ``--seed`` is
    noted as ignored in a one-process run, which continues its saved random state; ``--ema 0``
    as dropping the weight average). ``derived``: fields this run computed rather than was
    given (``--schedule-start``'s default, half of ``--steps``): not reported."""
    out = []
    for f in fields(cfg):
        if f.name in _RESUME_QUIET or f.name in derived or f.name not in saved:
            continue
        old, new = saved[f.name], getattr(cfg, f.name)
        if old == new or (f.name == "data" and _same_path(str(old), str(new))):
            continue
        note = ""
        if f.name == "seed" and world == 1:
            note = " (ignored: a resumed run continues its saved random state)"
        elif f.name == "ema" and not new:
            note = " (the saved weight average is dropped)"
        out.append(f"--{f.name.replace('_', '-')} {old} -> {new}{note}")
    return out


def _check_init_on_resume(saved: Dict, cfg: "TrainConfig", path: str, step) -> None:
    """ValueError when a resume of the checkpoint at ``path`` would ignore ``cfg.init``: the run
    there did not start from that file (a user who meant to start from a model got a resume of
    another run, told only "resumed from ..."). The command the run started with, repeated with
    its --init, resumes it (the --init then needs nothing: it was used at the start)."""
    if not cfg.init:
        return
    started = saved.get("init") or ""
    if started and _same_path(started, cfg.init):
        return
    raise ValueError(f"--out holds the checkpoint of a run (step {step}, {path}) that "
                     + (f"started from {started}" if started else "did not start from a file")
                     + f": resuming it would ignore --init {cfg.init}. Leave out --init to resume "
                     f"that run, or choose another --out to start from {cfg.init}")


def rd_loss(model: nn.Module, x: torch.Tensor, widths, lambdas, bf16: bool,
            quantization: str = "noise"):
    """Sum over widths of ``bpp_k + lambda_k * 255^2 * MSE_k`` (fp32) and per-width stats.

    Args:
        model: a :class:`~slimkernels.codec.SlimCodec` (its ``forward_widths`` runs a shared
            first layer once) or any module called ``model(x, w)`` (``quantization="noise"``
            only).
        x: ``[N, 3, H, W]`` float32 in [0, 1].
        quantization: ``"noise"`` or ``"mixed"`` (see :meth:`slimkernels.codec.SlimCodec.forward`).
        widths, lambdas: the widths to train and one finite lambda > 0 per width (paired by
            position).
        bf16: True or False.
    Returns:
        ``(loss 0-dim float32, {"bpp": [K], "mse": [K]} floats)``.
    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: ``x`` is not ``[N, 3, H, W]`` floats; ``widths`` is not a list of ints;
            ``lambdas`` is not one finite number > 0 per width (2 widths and 1 lambda had left
            the second width out of the loss, a negative lambda rewarded distortion);
            ``bf16`` is not a bool.
    """
    check_image_tensor(x, "rd_loss")
    if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"rd_loss expects a batch of RGB images [N, 3, H, W] float in [0, 1], "
                         f"got {tuple(x.shape)} {x.dtype}")
    widths = width_list(widths, "rd_loss")
    lambdas = check_lambdas(lambdas, "rd_loss", len(widths))
    if not isinstance(bf16, bool):
        raise ValueError(f"rd_loss: bf16={bf16!r} must be True or False")
    N, _, H, W = x.shape
    num_pixels = N * H * W
    total = x.new_zeros(())
    bpps, mses = [], []
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        fw = getattr(model, "forward_widths", None)
        if fw is not None:
            outs = fw(x, widths, quantization)
        elif quantization == "noise":
            outs = [model(x, w) for w in widths]
        else:
            raise ValueError(f"quantization {quantization!r} needs a model with forward_widths "
                             f"(a SlimCodec), got {type(model).__name__}")
    for out, lam in zip(outs, lambdas):
        lik = out["likelihoods"]["y"]
        bpp = torch.log(lik).sum() / (-math.log(2) * num_pixels)
        mse = torch.mean((out["x_hat"].float() - x) ** 2)
        total = total + bpp + lam * 255 ** 2 * mse
        bpps.append(float(bpp.detach()))
        mses.append(float(mse.detach()))
    return total, {"bpp": bpps, "mse": mses}


class _AllWidths(nn.Module):
    """One forward = the whole multi-width loss, so DDP sees one forward per backward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, widths, lambdas, bf16, quantization):
        return rd_loss(self.model, x, widths, lambdas, bf16, quantization)


def _first_line(e: Exception) -> str:
    """The first line of ``e``'s message, at most 200 characters (torch's can be kilobytes)."""
    msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return msg if len(msg) <= 200 else msg[:197] + "..."


def _load_optimizer(opt: torch.optim.Optimizer, state, damaged) -> None:
    """``opt.load_state_dict(state)``; ``damaged(reason)`` (an exception) raised for a state
    that is not one of ``opt``'s parameters (torch: KeyError 'param_groups', a ValueError that
    names no file; moments of another shape failed at the first step)."""
    if not isinstance(state, dict):
        raise damaged(f"a {type(state).__name__}, not a dict")
    try:
        opt.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as e:
        raise damaged(_first_line(e) if not isinstance(e, KeyError) else f"no entry {e}") \
            from None
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if k != "step" and isinstance(v, torch.Tensor) and v.shape != p.shape:
                    raise damaged(f"its {k} is {tuple(v.shape)} for a parameter of "
                                  f"{tuple(p.shape)}")


def _without_tables(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``sd`` with the entropy model's CDF table entries emptied (no tables: built on load)."""
    return {k: (v[:0] if v.dim() == 1 else v[:0, :0])
            if is_table_key(k) else v for k, v in sd.items()}


@torch.no_grad()
def validate(model: SlimCAE, images: torch.Tensor, widths, bf16: bool, batch: int = 4) -> Dict:
    """Per-width estimated bpp and PSNR (8-bit rounded) on ``images`` ``[M, 3, S, S]`` float in
    [0, 1] (``M >= 1``), ``batch`` (an int >= 1) images at a time.

    Raises:
        TypeError: ``images`` is not a tensor.
        ValueError: no images, images that are not ``[M, 3, H, W]`` floats in [0, 1] (0-255
            values gave a PSNR of -43 dB without a word), ``batch`` < 1, ``widths`` not a list
            of ints, ``bf16`` not a bool.
    """
    check_image_tensor(images, "validate")
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"validate expects images [M, 3, H, W] float in [0, 1], got "
                         f"{tuple(images.shape)} {images.dtype}")
    if images.shape[0] == 0:   # (a ZeroDivisionError)
        raise ValueError("validate: no images ([0, 3, H, W]): pass at least one")
    if not is_int(batch) or batch < 1:   # (0: "range() arg 3 must not be zero")
        raise ValueError(f"validate: batch {batch!r} must be an int >= 1")
    widths = width_list(widths, "validate")
    if not isinstance(bf16, bool):
        raise ValueError(f"validate: bf16={bf16!r} must be True or False")
    reach = pixel_values_outside(*value_range(images.detach().float()))
    if reach is not None:
        raise ValueError(f"validate expects finite float images in [0, 1]; their values reach "
                         f"{reach}")
    was = model.training
    model.eval()
    bpp, psnr = [], []
    for w in widths:
        bits, se_db = 0.0, []
        for k in range(0, len(images), batch):
            x = images[k:k + batch]
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x, w)
            bits += float(-torch.log2(out["likelihoods"]["y"]).sum())
            xh = out["x_hat"].float().clamp(0, 1).mul(255).round()
            mse = ((xh - x.mul(255).round()) ** 2).flatten(1).mean(1)
            se_db += (10 * torch.log10(255 ** 2 / mse.clamp_min(1e-10))).tolist()
        bpp.append(bits / (images.shape[0] * images.shape[2] * images.shape[3]))
        psnr.append(sum(se_db) / len(se_db))
    model.train(was)
    return {"bpp": bpp, "psnr": psnr}


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam over ``params`` (a list of floating-point tensors on one device) in torch's fused
    implementation where it exists for their device (CPU and CUDA, torch >= 2.4: one pass over
    all parameters), else the foreach one. On CPU torch's default is a loop over the tensors:
    for SlimCAE's 4.3 M parameters on the 2-core EPYC a step took 22.9 ms that way, 9.9 ms
    foreach and 3.1 ms fused (``/work/prof/adam.py``)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.Adam(params, lr=lr, foreach=True)


def _init_schedule(ck):
    """``(scheduler state, step of its next update)`` recorded in an ``init`` file (a training
    checkpoint, or a model file whose ``info`` carries them), else ``(None, None)``."""
    if not isinstance(ck, dict):
        return None, None
    src = ck if "step" in ck else ck.get("info") or {}
    return src.get("scheduler"), src.get("next_schedule")


def _init_progress(ck, path: str):
    """Step count and lambdas recorded in an ``init`` file: a training checkpoint (``step``,
    ``lambdas``) or a model file written by ``python/export_model.py`` (``info.steps``,
    ``info.lambdas_final``). Raises ValueError when the file records no step count."""
    if isinstance(ck, dict) and "step" in ck:
        return int(ck["step"]), ck.get("lambdas")
    info = ck.get("info") if isinstance(ck, dict) else None
    if isinstance(info, dict) and "steps" in info:
        return int(info["steps"]), info.get("lambdas_final")
    raise ValueError(f"--init-continue: {path} records no step count (neither a training "
                     "checkpoint nor an exported model file); leave out --init-continue to start "
                     "the count at 0")


def ema_decay(ema: float, step: int) -> float:
    """The weight average's decay at training step ``step`` (0 for the first): ``min(ema,
    (1 + step) / (10 + step))``, a warm-up (as TensorFlow's ExponentialMovingAverage with
    ``num_updates``) so that the average of a short run is not mostly the random initial weights
    (with a constant 0.999, 37 % of it after 1000 steps)."""
    return min(float(ema), (1.0 + step) / (10.0 + step))


def _resume_seed(seed: int, rank: int, step: int, what: str) -> int:
    """The seed of RNG ``what`` ("noise", "crops") of rank ``rank`` of a multi-process run
    resumed at ``step`` (distinct per rank, per RNG and per resume step)."""
    import hashlib
    h = hashlib.sha256(f"slimkernels-resume {what} {seed} {rank} {step}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def _rank_world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _torch_load(path: str, device, what: str, todo: str):
    """``torch.load`` with errors a user can act on (ValueError naming the file; the file is
    left untouched), after the archive's CRC-32 check (:func:`slimkernels.io.
    torch_archive_problem`: a checkpoint with a flipped bit in a weight resumed silently and
    the loss went to NaN, pointing at the same checkpoint)."""
    if not os.path.isfile(path):
        raise (ValueError if os.path.exists(path) else MissingFileError)(
            f"{what} {path} does not exist or is not a file")
    problem = torch_archive_problem(path)
    if problem is not None:
        raise ValueError(f"{what} {path} is damaged: {problem} (changed on disk or in "
                         f"transfer); {todo}")
    return load_torch_file(path, f"{what} {{path}} is not readable ({{error}}); {todo}", device)


def _plain_config(cfg: "TrainConfig") -> "TrainConfig":
    """A copy of ``cfg`` (checked) with Python numbers where numpy ones were given: the
    checkpoint stores the config, and the safe loader of ``load_model`` and of a resume refuses
    numpy scalars (``lr=np.float64(1e-4)`` trained, then its checkpoint did not load)."""
    out = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.type in ("float", "Optional[float]") and v is not None:
            v = float(v)
        elif f.type in ("int", "Optional[int]") and v is not None:
            v = int(v)
        out[f.name] = v
    out["widths"] = [int(w) for w in cfg.widths]
    out["lambdas"] = None if cfg.lambdas is None else [float(lam) for lam in cfg.lambdas]
    return dataclasses.replace(cfg, **out)


def _file_stamp(path: str) -> Optional[tuple]:
    """``(device, inode, size, mtime_ns)`` of ``path``, or None when there is no such file: a
    checkpoint written since (an atomic save: a new file) has another."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _RunLock:
    """An exclusive lock on a run folder (``<out>/.lock``, ``flock``: released when the process
    ends, however it ends), holding the owner's pid for the message another trainer gets.
    ValueError when another process holds it. No-op where ``fcntl`` is missing (Windows)."""

    def __init__(self, folder: str):
        self._fh = None
        try:
            import fcntl
        except ImportError:   # pragma: no cover - not POSIX
            return
        path = os.path.join(folder, ".lock")
        fh = open(path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # (held: EWOULDBLOCK)
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise ValueError(f"--out {folder} is in use by another training (pid {owner}): wait "
                             f"for it to end, or choose another --out") from None
        except OSError as e:   # no locks on this file system (NFS without lockd: ENOLCK, ...)
            fh.close()
            import warnings
            warnings.warn(f"cannot lock the run folder {folder} ({e.strerror}): a second "
                          f"training on it would not be refused", RuntimeWarning, stacklevel=3)
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()   # (closing the descriptor drops the flock)
            self._fh = None


class Trainer:
    """Runs :class:`TrainConfig`; resumes from ``<out>/checkpoint.pt`` when it exists.
    :meth:`fit` holds a lock on ``cfg.out`` while it runs: a second one on the same folder (in
    another process, or another Trainer's fit in this one) is refused with a ValueError instead
    of overwriting the first one's checkpoint.

    A Trainer trains on from the state it read when it was built (or last saved): when
    ``checkpoint.pt`` has been written by another training since then (another Trainer on the
    folder fitted after this one was built), :meth:`fit` and :meth:`save` refuse with a
    ValueError instead of replacing the newer checkpoint with this one's older state (the
    steps trained since would be lost); build a new Trainer to resume from it. (Two Trainers
    built on one folder at step 2, ``a.fit()`` to step 4, then ``b.fit()`` re-trained steps
    2..4 and overwrote a's checkpoint.) Under torchrun every rank raises rank 0's refusal.
    :meth:`save` outside a fit takes the folder's lock too (refused while a fit holds it); a
    checkpoint written around the lock while a fit runs (a copy over it) is kept, and the fit
    saves to ``checkpoint.conflict-<pid>.pt`` instead, saying so."""

    def __init__(self, cfg: TrainConfig, log=print):
        cfg.check()
        # an own copy: the unset lambdas and schedule start are resolved into it (and saved)
        self.cfg = cfg = _plain_config(cfg)
        check_quantization(cfg.quantization)
        self.rank, self.world = _rank_world()
        self._print = log
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed + self.rank)
        self.device = check_device(cfg.device)
        #: the resolved ``cfg.bf16``: whether the transforms run under bf16 autocast
        self.bf16 = bool(native_bf16(self.device)) if cfg.bf16 is None else bool(cfg.bf16)
        self.model = SlimCAE(cfg.widths, cfg.gdn).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        main = [p for n, p in self.model.named_parameters() if not n.endswith("quantiles")]
        aux = [p for n, p in self.model.named_parameters() if n.endswith("quantiles")]
        self.opt = make_adam(main, cfg.lr)
        self.aux_opt = make_adam(aux, cfg.aux_lr)
        self.step = 0
        self.stopped_by = None   # the signal that ended the last fit(), if one did
        if cfg.lambdas is not None and len(cfg.lambdas) != len(cfg.widths):
            raise ValueError(f"{len(cfg.widths)} widths but {len(cfg.lambdas)} lambdas (--widths "
                             f"{' '.join(map(str, cfg.widths))}, --lambdas "
                             f"{' '.join(map(str, cfg.lambdas))}): give one lambda per width, in "
                             f"the same order, or leave out --lambdas for the defaults")
        self._explicit_schedule_start = cfg.schedule_start is not None
        if cfg.schedule_start is None:
            cfg.schedule_start = cfg.steps // 2
        self.lambdas: List[float] = []   # set by _resume_or_init
        # built by _resume_or_init from the lambdas the run trains with (not the options')
        self.scheduler: Optional[LambdaScheduler] = None
        self.next_schedule = cfg.schedule_start
        self.sampler: Optional[CropSampler] = None
        self._sampler_seed = cfg.seed + self.rank   # (a resumed multi-process run: its own)
        self.val_images: Optional[torch.Tensor] = None
        if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
            raise ValueError(f"--out {cfg.out} is a file: --out names the run's folder "
                             f"(checkpoint.pt, log.jsonl); give another path")
        if cfg.data and os.path.isdir(cfg.data) and _same_path(cfg.out, cfg.data):
            # (the run's checkpoint and log went among the training images; eval refuses the
            # same for its --out and image folder)
            raise ValueError(f"--out {cfg.out} is the --data folder: give the run a folder of its "
                             f"own")
        # (a failed fit removes the folders it made and left empty: _remove_unused_out)
        self._made_out = missing_folders(cfg.out)
        try:
            os.makedirs(cfg.out, exist_ok=True)
        except OSError as e:   # (a parent that is a file, or cannot be written: a traceback)
            raise ValueError(f"--out {cfg.out}: cannot make the run folder ({e.strerror}); "
                             f"give another path") from None
        self.ckpt_path = os.path.join(cfg.out, "checkpoint.pt")
        self.log_path = os.path.join(cfg.out, "log.jsonl")
        self._lock: Optional[_RunLock] = None   # held by fit()
        self._conflict_warned = False
        self.ema: Optional[Dict[str, torch.Tensor]] = None
        try:
            self._resume_or_init()
        except BaseException:
            # (a refused --init, --schedule with one width: the folders made stayed, empty)
            self._remove_unused_out()
            raise
        self.wrapped = _AllWidths(self.model)
        if self.world > 1:   # (its constructor gives every rank rank 0's weights)
            self.wrapped = nn.parallel.DistributedDataParallel(self.wrapped,
                                                               find_unused_parameters=True)
        if cfg.ema > 0 and self.ema is None:   # a new run, or a checkpoint written without one
            # (after the wrap: each rank's average began at its own random weights before, and
            # the ranks' validations differed until the average forgot them)
            self.ema = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self._ema_pairs = None if self.ema is None else (
            list(self.ema.values()), [p for _, p in self.model.named_parameters()])

    def close(self) -> None:
        """Release the run folder's lock (held while :meth:`fit` runs; it releases it when it
        returns, the process's exit in any case)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- logging / checkpoints ---------------------------------------------------------------
    def log(self, record: Dict):
        """Append ``record`` (JSON-serializable dict) with the time and step to ``<out>/log.jsonl``
        (rank 0 only)."""
        if self.rank != 0:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": self.step, **record}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _resume_or_init(self):
        cfg = self.cfg
        # (before it is read: a checkpoint written while it is read is another one)
        self._ckpt_stamp = _file_stamp(self.ckpt_path)
        if os.path.exists(self.ckpt_path):
            ck = _torch_load(self.ckpt_path, self.device, "checkpoint",
                             "move it out of the run folder to start a new run there")
            if not (isinstance(ck, dict) and all(k in ck for k in ("model", "opt", "aux_opt",
                                                                     "step", "lambdas"))):
                raise ValueError(f"{self.ckpt_path} is not a checkpoint of this trainer; move it "
                                 f"out of the run folder to start a new run there")
            saved = ck.get("config") if isinstance(ck.get("config"), dict) else {}
            # (they were trusted: 1 lambda for 2 widths trained the second width with no loss
            # term, a negative one rewarded distortion)
            # (values first, the count after the run's options are known to be its own: a
            # resume with other --widths is told so, not that a sound checkpoint is damaged)
            held = {"lambdas": ck["lambdas"]}
            if saved.get("lambdas") is not None:
                held["config's lambdas"] = saved["lambdas"]
            checked = {what: self._checkpoint_lambdas(lams, what, count=False)
                       for what, lams in held.items()}
            ck_lambdas = checked["lambdas"]
            if cfg.lambdas is None:   # (unset: the lambdas the run started with)
                cfg.lambdas = list(checked.get("config's lambdas") or ck_lambdas)
            _check_same_run(ck.get("config"), cfg, self.ckpt_path)
            _check_init_on_resume(saved, cfg, self.ckpt_path, ck["step"])
            for what, lams in held.items():
                self._checkpoint_lambdas(lams, what)
            # each entry is checked before it is used: a damaged one was an AttributeError,
            # KeyError, TypeError or torch RuntimeError from inside the resume (or, for a weight
            # average of another shape, from the first training step)
            if not is_int(ck["step"]) or ck["step"] < 0:
                raise self._damaged(f"its step {ck['step']!r} is not an int >= 0")
            if not isinstance(ck["model"], dict):
                raise self._damaged(f"its model weights are a {type(ck['model']).__name__}, "
                                    f"not a dict")
            misfit = state_dict_misfit(self.model, ck["model"])
            if misfit:   # (a checkpoint without config: torch's error listed every key)
                raise ValueError(f"{self.ckpt_path} does not fit this model (--widths "
                                 f"{cfg.widths}, --gdn {cfg.gdn}): {misfit}; resume it with the "
                                 f"options it was trained with, or move it out of the run "
                                 f"folder to start a new run there")
            bad = first_non_finite(ck["model"])
            if bad is not None:   # (save() refuses them; was "loss is nan at step N: lower the lr")
                raise self._damaged(f"its weight {bad} is not finite (NaN or inf)")
            # (the saved tables are for loading the checkpoint as a model: the training model's
            # stay empty, as in a run that did not resume)
            self.model.load_state_dict(_without_tables(ck["model"]))
            for what, opt, key in (("optimizer", self.opt, "opt"),
                                   ("entropy models' optimizer", self.aux_opt, "aux_opt")):
                _load_optimizer(opt, ck[key], lambda e, what=what: self._damaged(
                    f"its {what} state does not fit this model ({e})"))
            # this run's learning rates and implementation apply from here on (load_state_dict
            # restored the old settings, e.g. fused=None from an older checkpoint)
            for opt, lr in ((self.opt, cfg.lr), (self.aux_opt, cfg.aux_lr)):
                for group in opt.param_groups:
                    group["lr"] = lr
                    group["fused"] = opt.defaults.get("fused")
                    group["foreach"] = opt.defaults.get("foreach")
            self.step = ck["step"]
            self.lambdas = ck_lambdas
            # the search's next step; before it began (no first reference slope measured yet,
            # e.g. a run trained without --schedule, or stopped before its --schedule-start),
            # an explicit --schedule-start of this run applies
            sst = ck.get("scheduler")
            self._check_scheduler_state(sst)
            if ck.get("next_schedule") is not None and not (
                    is_int(ck["next_schedule"]) and ck["next_schedule"] >= 0):
                raise self._damaged(f"its next_schedule {ck['next_schedule']!r} is not a step "
                                    f"(an int >= 0)")
            begun = sst is not None and (sst.get("s_ref") is not None or sst.get("i", 0) > 0
                                         or bool(sst.get("history")))
            if begun or not self._explicit_schedule_start:
                ns = ck.get("next_schedule")
                self.next_schedule = self.next_schedule if ns is None else int(ns)
            if not self._explicit_schedule_start and is_int(saved.get("schedule_start")):
                # (unset: the run's own, which the resumed search keeps; the saved config said
                # half of this invocation's --steps while the search went on from the first's)
                cfg.schedule_start = int(saved["schedule_start"])
            # kept even when this run does not schedule: a later run with --schedule goes on
            self._scheduler_state = ck.get("scheduler")
            self._make_scheduler(self._scheduler_state, self.lambdas)
            self._sampler_state = ck.get("sampler")
            if self._sampler_state is not None:
                try:   # (set on a spare generator: load_data sets the sampler's)
                    torch.Generator().set_state(self._sampler_state["gen"])
                except (TypeError, KeyError, IndexError, RuntimeError, ValueError) as e:
                    raise self._damaged(f"its crop sampler state is not one "
                                        f"({_first_line(e)})") from None
            if cfg.ema > 0 and ck.get("ema") is not None:
                params = dict(self.model.named_parameters())
                names = list(params)
                if not isinstance(ck["ema"], dict) or sorted(ck["ema"]) != sorted(names):
                    raise ValueError(f"{self.ckpt_path}: its weight average does not match this "
                                     "model's parameters; start it afresh with --ema 0 once")
                for n in names:   # (another shape failed at the first step's lerp)
                    v = ck["ema"][n]
                    if not (isinstance(v, torch.Tensor) and v.is_floating_point()
                            and v.shape == params[n].shape):
                        got = (f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor)
                               else type(v).__name__)
                        raise ValueError(f"{self.ckpt_path}: its weight average of {n} is {got}, "
                                         f"the weight {tuple(params[n].shape)} "
                                         f"{params[n].dtype}; start it afresh with --ema 0 once")
                bad = first_non_finite(ck["ema"])
                if bad is not None:
                    raise ValueError(f"{self.ckpt_path}: its weight average of {bad} is not "
                                     f"finite (NaN or inf); start it afresh with --ema 0 once")
                self.ema = {n: ck["ema"][n].to(self.device) for n in names}
            if ck.get("torch_rng") is not None and self.world == 1:
                try:   # the training noise continues exactly
                    torch.set_rng_state(ck["torch_rng"])
                except (TypeError, RuntimeError, ValueError) as e:
                    raise self._damaged(f"its random number generator state is not one "
                                        f"({_first_line(e)})") from None
            elif self.world > 1:
                # one sampler state and RNG state are saved (rank 0's): each rank draws from a
                # stream of its own, new at every resume (else every rank drew rank 0's crops)
                torch.manual_seed(_resume_seed(cfg.seed, self.rank, self.step, "noise"))
                self._sampler_seed = _resume_seed(cfg.seed, self.rank, self.step, "crops")
                self._sampler_state = None
            self._print(f"resumed from {self.ckpt_path} at step {self.step}")
            changed = _resume_differences(saved, cfg, self.world,
                                          derived=() if self._explicit_schedule_start
                                          else ("schedule_start",))
            if changed:   # (applied, or for --seed ignored, without a word before)
                self._print("options that differ from the saved run's: " + "; ".join(changed))
        else:
            self._sampler_state = None
            self._scheduler_state = None
            given = cfg.lambdas is not None
            if cfg.lambdas is None:
                cfg.lambdas = cfg.default_lambdas()
            self.lambdas = list(cfg.lambdas)
            if cfg.init:
                ck = _torch_load(cfg.init, self.device, "--init file",
                                 "pass a model file or a checkpoint of python/train.py")
                sd = ck.get("model", ck.get("state_dict", ck)) if isinstance(ck, dict) else ck
                if not isinstance(sd, dict):
                    raise ValueError(f"--init file {cfg.init} holds a {type(sd).__name__}, not "
                                     f"weights: pass a model file or a checkpoint of "
                                     f"python/train.py")
                misfit = state_dict_misfit(self.model, sd)
                if misfit:   # (torch's own error lists every key: kilobytes)
                    held = ck.get("config") if isinstance(ck, dict) else None
                    held = {k: held[k] for k in ("widths", "gdn") if k in held} \
                        if isinstance(held, dict) else {}
                    said = ", ".join(f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                                     for k, v in held.items())
                    raise ValueError(f"--init file {cfg.init} does not fit this model (--widths "
                                     f"{cfg.widths}, --gdn {cfg.gdn}): {misfit}"
                                     + (f"; the file holds a model of {said}: train with those"
                                        if said else ""))
                bad = first_non_finite(sd)
                if bad is not None:   # (was "loss is nan at step 0: lower the lr or resume")
                    raise ValueError(f"--init file {cfg.init}: its weight {bad} is not finite "
                                     f"(NaN or inf; a run that diverged?): pass weights saved "
                                     f"before the divergence, or leave out --init")
                self.model.load_state_dict(sd)
                msg = f"initialized weights from {cfg.init}"
                if cfg.init_continue:
                    self.step, lambdas = _init_progress(ck, cfg.init)
                    if lambdas is not None:
                        try:
                            lambdas = check_lambdas(lambdas, "--init", len(cfg.widths))
                        except ValueError:   # (a count or values the loss cannot use)
                            raise ValueError(f"{cfg.init} was trained with lambdas {lambdas!r}, "
                                             f"not one finite number > 0 per width of this run "
                                             f"({len(cfg.widths)} widths): leave out "
                                             f"--init-continue to train with --lambdas") from None
                        self.lambdas = list(lambdas)
                    msg += f"; continuing at step {self.step} with lambdas {self.lambdas}"
                    sched, due = _init_schedule(ck)
                    if sched is not None:
                        self._scheduler_state = sched
                        self._make_scheduler(sched, lambdas)
                        if self.scheduler is not None:
                            # the lambda schedule goes on where the exported run left it
                            self.lambdas = list(self.scheduler.lambdas)
                            self.next_schedule = max(int(due or 0), self.step)
                            msg += (f"; lambda schedule at pair {self.scheduler.i}, next update "
                                    f"at step {self.next_schedule}")
                    if given and list(cfg.lambdas) != self.lambdas:
                        msg += (f" (--lambdas {cfg.lambdas} not used: --init-continue takes "
                                f"the file's)")
                    # (the run's config and an exported model's lambdas_initial: the lambdas it
                    # started with, not the defaults it never trained with)
                    cfg.lambdas = list(self.lambdas)
                self._print(msg)
            if self.scheduler is None:
                self._make_scheduler(None, None)

    def _damaged(self, what: str) -> ValueError:
        """The error for a checkpoint.pt whose ``what`` cannot be resumed from."""
        return ValueError(f"{self.ckpt_path} is damaged: {what}; move it out of the run folder "
                          f"to start a new run there")

    def _checkpoint_lambdas(self, lambdas, what: str, count: bool = True) -> List[float]:
        """The checkpoint's ``lambdas`` (its entry ``what``) as floats; ValueError naming the
        checkpoint unless they are finite numbers > 0, one per width (``count``)."""
        n = len(self.cfg.widths)
        try:
            return check_lambdas(lambdas, what, n if count else None)
        except ValueError:
            raise self._damaged(f"its {what} {lambdas!r} are not " + (
                f"one finite number > 0 per width ({n} width{'s' if n != 1 else ''})" if count
                else "finite numbers > 0")) from None

    def _check_scheduler_state(self, sst) -> None:
        """ValueError naming the checkpoint unless its lambda schedule state ``sst`` is None or a
        state a scheduler of this run can load (checked with or without ``--schedule``: the
        state is kept for a later run with it)."""
        if sst is None:
            return
        if not isinstance(sst, dict):
            raise self._damaged(f"its lambda schedule state is a {type(sst).__name__}, not a "
                                f"dict")
        if len(self.lambdas) >= 2:   # (one width: no schedule to load it into)
            try:
                LambdaScheduler(self.lambdas).load_state_dict(sst)
            except ValueError as e:
                raise self._damaged(f"its lambda schedule state: {e}") from None

    def _make_scheduler(self, state: Optional[Dict], trained) -> None:
        """``self.scheduler`` (with ``cfg.schedule``) from the lambdas the run trains with
        (``self.lambdas``), continuing ``state`` when there is one. ``trained``: the training
        lambdas recorded beside ``state`` (or None): where they differ from the state's (a
        checkpoint of an older version, which restarted the search from the options' lambdas
        after a resume without --schedule) they win, the search's progress kept."""
        if not self.cfg.schedule:
            self.scheduler = None
            return
        self.scheduler = LambdaScheduler(self.lambdas)
        if state:
            self.scheduler.load_state_dict(state)
            if trained is not None and list(map(float, trained)) != self.scheduler.lambdas:
                self._print(f"note: the saved lambda schedule had lambdas "
                            f"{self.scheduler.lambdas}, the run trained with {list(trained)}: "
                            f"it goes on from the latter")
                self.scheduler.lambdas = [float(v) for v in trained]

    def save(self):
        """Atomically write ``checkpoint.pt`` (model, optimizers, step, lambdas, sampler)."""
        if self.rank != 0:
            return
        state = self.model.state_dict()
        for where, d in (("weight", state), ("averaged weight", self.ema or {})):
            bad = first_non_finite(d)
            if bad is not None:   # (the checkpoint before it stays: a resume goes on from there)
                raise FloatingPointError(f"the {where} {bad} is not finite at step {self.step}: "
                                         f"not saved over the last checkpoint "
                                         f"({self.ckpt_path}); lower --lr / --aux-lr and resume "
                                         f"from it")
        tables = self._tables(averaged=False)
        # (not built yet: none saved, rather than those of older weights)
        state = _without_tables(state) if tables is None else {**state, **tables}
        ck = {"model": state, "opt": self.opt.state_dict(),
              "aux_opt": self.aux_opt.state_dict(), "step": self.step, "lambdas": self.lambdas,
              "next_schedule": self.next_schedule, "config": asdict(self.cfg),
              # (without --schedule, the state a resumed run had: a later --schedule goes on)
              "scheduler": (self.scheduler.state_dict() if self.scheduler
                            else self._scheduler_state),
              "sampler": self.sampler.state_dict() if self.sampler else None,
              "ema": self.ema, "ema_decay": self.cfg.ema if self.ema is not None else None,
              "bf16": self.bf16,   # (the resolved --bf16: config holds None for "auto")
              "ema_tables": self._tables(averaged=True) if self._ema_pairs is not None else None,
              "torch_rng": torch.get_rng_state()}
        if self._lock is not None:   # (inside fit: it holds the folder's lock)
            # (under fit's lock: a checkpoint written since came from outside the lock, e.g. a
            # copy over it; neither it nor this run's steps are lost, and no rank is left
            # waiting for one that raised)
            path = self.ckpt_path if self._checkpoint_is_ours() else self._conflict_path()
            atomic_torch_save(ck, path)
            if path == self.ckpt_path:
                self._ckpt_stamp = _file_stamp(path)
            return
        lock = _RunLock(self.cfg.out)   # (refused while a fit holds the folder)
        try:
            self._check_checkpoint_is_ours()
            atomic_torch_save(ck, self.ckpt_path)
            self._ckpt_stamp = _file_stamp(self.ckpt_path)
        finally:
            lock.release()

    def _checkpoint_is_ours(self) -> bool:
        now = _file_stamp(self.ckpt_path)
        return now is None or now == self._ckpt_stamp

    def _conflict_path(self) -> str:
        """Where a fit saves when ``checkpoint.pt`` was written from outside its lock (said
        once): ``checkpoint.conflict-<pid>.pt`` beside it."""
        path = os.path.join(self.cfg.out, f"checkpoint.conflict-{os.getpid()}.pt")
        if not self._conflict_warned:
            self._conflict_warned = True
            self._print(f"warning: {self.ckpt_path} was written by something else during this "
                        f"training (at step {self.step}); this run's checkpoints go to {path} "
                        f"instead (move it to checkpoint.pt to resume from it)")
        return path

    def _check_checkpoint_is_ours(self) -> None:
        """ValueError when ``checkpoint.pt`` is no longer the one this Trainer resumed from or
        last wrote (another training wrote it since: saving would replace it with older state;
        a checkpoint that is gone is not in the way)."""
        if self._checkpoint_is_ours():
            return
        was = ("was built (it started a new run)" if self._ckpt_stamp is None
               else "read or last wrote it")
        raise ValueError(f"{self.ckpt_path} was written by another training since this Trainer "
                         f"{was} (this one is at step {self.step}): training on would replace "
                         f"it with older state; build a new Trainer to resume from it")

    def _tables(self, averaged: bool) -> Optional[Dict[str, torch.Tensor]]:
        """The entropy model's CDF tables (its state_dict entries, on the CPU) built from the
        weight average (``averaged``) or the training weights, saved with the checkpoint:
        :func:`slimkernels.pretrained.load_model` uses them instead of building them from the
        weights on whatever machine loads the checkpoint (float arithmetic whose last bits
        depend on the CPU's vector unit: a count one apart in 7 of 300 perturbed models between
        AVX2 and AVX-512, hence another model id, and files written on one machine refused on
        the other). None when the tables cannot be built yet (an early, untrained entropy
        model). The model's own table buffers are left as they were (DDP replicas must keep
        buffers of one shape)."""
        eb = self.model.entropy_bottleneck
        kept = [(b, b._quantized_cdf, b._cdf_length, b._offset) for b in eb.bottlenecks]
        ctx = self.averaged_weights() if averaged else contextlib.nullcontext(self.model)
        try:
            with ctx as m, torch.no_grad():
                m.update(force=True)
                return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()
                        if is_table_key(k)}
        except ValueError:   # (update's refusals: implausible quantiles, a non-finite density)
            return None
        finally:
            for b, cdf, length, offset in kept:
                b._quantized_cdf, b._cdf_length, b._offset = cdf, length, offset

    # -- data ------------------------------------------------------------------------------
    def load_data(self):
        """Read the training folder: the crop sampler over its training images (restored from
        the checkpoint when resuming) and the center-cropped validation images ``[M, 3, S, S]``
        float32 on the device (ValueError for crops larger than every image, tiny validation images)."""
        cfg = self.cfg
        train_paths, val_paths = split_train_val(list_images(cfg.data), cfg.val_split)
        shared = not val_paths
        if shared:
            val_paths = train_paths[:1]
        self._print(f"loading {len(train_paths)} training and {len(val_paths)} validation images")
        if shared:
            self._print(f"note: fewer than --val-split {cfg.val_split} images: the validation "
                        f"image {val_paths[0]} is also a training image")
        self.sampler = CropSampler([load_rgb(p) for p in train_paths], seed=self._sampler_seed,
                                   by_area=cfg.sample_by_area)
        if self._sampler_state:
            self.sampler.load_state_dict(self._sampler_state)
        self.sampler.check_crop(cfg.crop_large if self.step >= cfg.large_after else cfg.crop)
        if cfg.large_after < cfg.steps:   # fail now, not when the run reaches --large-after
            self.sampler.check_crop(cfg.crop_large)
        val = [load_rgb(p) for p in val_paths]
        sides = [min(v.shape[1:]) for v in val]
        for p, side in zip(val_paths, sides):
            if side < SlimCAE.downsampling:   # (interpolate failed on its empty crop)
                raise ValueError(f"validation image {p} is {side} pixels on its short side, "
                                 f"under {SlimCAE.downsampling}: remove it from {cfg.data}")
        small = [p for p, side in zip(val_paths, sides) if side < cfg.val_size]
        if small:
            self._print(f"note: {len(small)} validation image(s) smaller than --val-size "
                        f"{cfg.val_size} are upscaled to it (e.g. {small[0]})")
        self.val_images = center_crops(val, cfg.val_size)
        self.val_images = self.val_images.to(self.device)

    # -- loop ------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor) -> Dict:
        """One optimizer step on ``x`` ``[N, 3, crop, crop]`` float32 in [0, 1] (all widths, then the
        entropy models' aux loss, then the weight average); returns ``{"loss", "aux", "bpp": [K],
        "mse": [K]}`` floats. FloatingPointError for a loss that is not finite."""
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        # CPU + bf16: GDN's autograd composition through torch.compile (1.5-2.3x faster there)
        with compiled_training(cfg.compile_gdn and self.bf16 and self.device.type == "cpu"):
            loss, stats = self.wrapped(x, cfg.widths, self.lambdas, self.bf16, cfg.quantization)
            loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.opt.param_groups[0]["params"], cfg.clip)
        self.opt.step()
        self.aux_opt.zero_grad(set_to_none=True)
        aux = self.model.aux_loss()
        aux.backward()
        self.aux_opt.step()
        if self._ema_pairs is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self._ema_pairs[0], self._ema_pairs[1],
                                     1.0 - ema_decay(self.cfg.ema, self.step))
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"loss is {float(loss.detach())} at step {self.step}: lower the lr or "
                                     "resume from the last checkpoint")
        return {"loss": float(loss.detach()), "aux": float(aux.detach()), **stats}

    @contextlib.contextmanager
    def averaged_weights(self):
        """Within the block the model holds the moving average of its weights (when ``ema`` is
        on); the training weights come back after it."""
        if self._ema_pairs is None:
            yield self.model
            return
        avg, params = self._ema_pairs
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            torch._foreach_copy_(params, avg)
        try:
            yield self.model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, saved)

    def run_validation(self) -> Dict:
        """Validate (the weight average when ``ema`` is on, else the training weights), log it
        and feed the lambda scheduler. RuntimeError before the validation images are read
        (:meth:`load_data`, which :meth:`fit` calls)."""
        if self.val_images is None:   # (was "object of type 'NoneType' has no len()")
            raise RuntimeError("run_validation: no validation images yet: call load_data() (or "
                               "fit()) first")
        with self.averaged_weights() as m:
            res = validate(m, self.val_images, self.cfg.widths, self.bf16)
        weights = "ema" if self._ema_pairs is not None else "train"
        self.log({"event": "val", "weights": weights, "lambdas": self.lambdas, **res})
        if self.scheduler is not None and not self.scheduler.done and self.step >= self.next_schedule:
            new = self.scheduler.observe(res["bpp"], res["psnr"])
            ev = self.scheduler.history[-1]
            self.log({"event": "lambda_update", **ev})
            self._print(f"lambda scheduler: {ev['action']} -> {new}")
            if new is not None:
                self.lambdas = new
            self.next_schedule = self.step + self.cfg.schedule_steps
        return res

    def fit(self):
        """Train until ``cfg.steps``; validates, logs and checkpoints on the way. SIGTERM,
        SIGINT (Ctrl-C) or SIGHUP (a closed terminal) end the current step, write the checkpoint
        and return; the signal's number is then in ``self.stopped_by`` (None when the run
        reached ``cfg.steps``), so that callers can tell an interrupted run from a finished one. ValueError, before
        anything trains, when another training holds the run folder, or has written its
        checkpoint since this Trainer read or wrote it (see the class)."""
        cfg = self.cfg
        # one fit per run folder at a time (rank 0's lock; the other ranks of a torchrun share
        # the folder): two on one folder both saved checkpoint.pt, the last save winning, and
        # mixed their logs
        refused = None
        if self.rank == 0:
            try:
                self._lock = _RunLock(cfg.out)
                self._check_checkpoint_is_ours()   # (under the lock: nobody else writes it now)
            except ValueError as e:
                refused = e
        if self.world > 1:
            # every rank raises rank 0's refusal (the others had gone on into training and
            # waited in the first collective for good)
            said = [None if refused is None else str(refused)]
            dist.broadcast_object_list(said, src=0)
            if said[0] is not None and refused is None:
                refused = ValueError(said[0])
        if refused is not None:
            self.close()
            raise refused
        try:
            return self._fit(cfg)
        except BaseException:
            self.close()
            self._remove_unused_out()
            raise
        finally:
            self.close()

    def _remove_unused_out(self) -> None:
        """After a fit that failed before writing anything (no images, an unreadable one...), or
        a construction refused after the folder was made (a bad ``--init``, ``--schedule`` with
        one width):
        the run folder this Trainer made (and the missing parents it made for it), when it holds
        nothing but the lock file (a failed run left a folder with only ``.lock`` in it).
        Anything else in it stays."""
        if self.rank != 0 or not self._made_out:
            return
        try:
            if set(os.listdir(self.cfg.out)) <= {".lock"}:
                lock = os.path.join(self.cfg.out, ".lock")
                if os.path.exists(lock):
                    os.remove(lock)
                remove_empty_folders(self._made_out)
        except OSError:
            pass

    def _fit(self, cfg):
        if self.step >= cfg.steps and os.path.exists(self.ckpt_path):
            # (a resumed run that is done: said before reading the images)
            self.stopped_by = None
            self._print(f"the run in {cfg.out} is at step {self.step} already (--steps "
                        f"{cfg.steps}): nothing to train; give a larger --steps to go on")
            return self
        if self.step >= cfg.steps and cfg.init_continue:
            # (it wrote a checkpoint of the --init weights and said "done": the bundled model is
            # at step 123,269, past the default --steps 1000)
            self.stopped_by = None
            self._print(f"--init {cfg.init} --init-continue starts at its step {self.step}, "
                        f"which is past --steps {cfg.steps}: nothing to train, no checkpoint "
                        f"written; give a --steps above {self.step} (e.g. --steps "
                        f"{self.step + 1000} for 1000 more)")
            return self
        if self.sampler is None:
            self.load_data()
        last_ckpt = time.time()
        t0, n0 = time.time(), self.step
        bar = None
        if cfg.progress and self.rank == 0:
            try:
                from tqdm import tqdm
                bar = tqdm(total=cfg.steps, initial=self.step, dynamic_ncols=True,
                           disable=not sys.stderr.isatty(), mininterval=5)
            except ImportError:
                bar = None
        self.model.train()
        self._print(f"transforms in {'bf16 autocast' if self.bf16 else 'fp32'}"
                    f"{'' if cfg.bf16 is not None else ' (chosen for this device; --bf16 / --no-bf16 override)'}")
        self.log({"event": "start", "bf16": self.bf16, "device": str(self.device),
                  "threads": torch.get_num_threads(), "quantization": cfg.quantization})
        stop = {"signal": None}

        def _on_signal(signum, frame):  # finish the step, checkpoint, then stop
            stop["signal"] = signum

        old = {}
        if threading.current_thread() is threading.main_thread():
            # (SIGHUP too: a closed terminal or a dropped ssh session ended the run without a
            # checkpoint, losing the steps since the last periodic save; a signal ignored on
            # purpose stays ignored: SIGHUP under nohup, SIGINT in a script's background job,
            # which stopped the run when the terminal closed)
            for name in ("SIGTERM", "SIGINT", "SIGHUP"):
                sig = getattr(signal, name, None)
                if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
                    old[sig] = signal.signal(sig, _on_signal)
        try:
            self._loop(cfg, bar, stop, t0, n0, last_ckpt)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        self.save()
        if bar is not None:
            bar.close()
        self.stopped_by = stop["signal"]
        if stop["signal"] is not None and self.rank == 0:   # (the rank that saved)
            self._print(f"stopped by signal {stop['signal']} at step {self.step} of {cfg.steps}; "
                        "checkpoint saved: run the same command again to resume")
        elif self.rank == 0:
            self._print(f"done: step {self.step}; checkpoint {self.ckpt_path} (load_model() reads "
                        f"it; python/export_model.py of the source repository writes a model "
                        f"file from it)")
        return self

    def _stop_now(self, stop) -> bool:
        """Whether the run stops before its next step: a signal caught by this process
        (``stop["signal"]``), and under torchrun by any rank's (each step's all-reduce of the
        signal number, taken into ``stop``): the ranks stop at the same step, rank 0 saving it.
        (A signal sent to one worker stopped that rank alone: rank 0 died in the next gradient
        all-reduce with the run unsaved, while the other said its checkpoint was saved.)"""
        if self.world == 1:
            return stop["signal"] is not None
        flag = torch.tensor([stop["signal"] or 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if stop["signal"] is None and int(flag.item()) != 0:
            stop["signal"] = int(flag.item())
        return stop["signal"] is not None

    def _loop(self, cfg, bar, stop, t0, n0, last_ckpt):
        x_dev = self.device
        while self.step < cfg.steps and not self._stop_now(stop):
            crop = cfg.crop_large if self.step >= cfg.large_after else cfg.crop
            x = self.sampler.sample(cfg.batch, crop).to(x_dev)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            stats = self.train_step(x)
            self.step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}")
            if self.step % 50 == 0:
                rate = (self.step - n0) / max(time.time() - t0, 1e-9)
                self.log({"event": "train", "crop": crop, "steps_per_s": rate, **stats})
            # a scheduled validation, or the scheduler's due date
            due_sched = (self.scheduler is not None and not self.scheduler.done
                         and self.step >= self.next_schedule)
            if (cfg.val_every and self.step % cfg.val_every == 0) or due_sched:
                self.run_validation()
            if time.time() - last_ckpt > cfg.ckpt_every_s:
                self.save()
                last_ckpt = time.time()
