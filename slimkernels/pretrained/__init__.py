"""The bundled pretrained SlimCAE and loading/saving of model files.

A model file is a ``torch.save`` of ``{"format": "slimkernels-model", "config": {...},
"state_dict": {...}, "info": {...}}``; the state_dict includes the integer CDF tables.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import torch

from .._device import check_device
from .._fork import one_thread_in_forked_child
from ..codec import _ORIG_MOD
from ..io import (MissingFileError, _load_error, atomic_torch_save, load_torch_file,
                  refuse_special_file, torch_archive_problem)
from ..models import SlimCAE
from ..nn.entropy import state_dict_misfit

__all__ = ["load_model", "save_model", "bundled_model_path", "model_info", "DEFAULT_MODEL"]

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_MODEL = os.path.join(HERE, "slimcae.pt")


def bundled_model_path() -> Optional[str]:
    """Path of the bundled weights, or None when this install has none."""
    return DEFAULT_MODEL if os.path.exists(DEFAULT_MODEL) else None


def save_model(model: SlimCAE, path: str, info: Optional[Dict] = None) -> None:
    """Save ``model`` (config + fp32 state_dict incl. CDF tables, built if missing) to ``path``.

    The CDF tables are saved as they are when the model has them: after changing the entropy
    models (training, a load of other weights) call ``model.update()`` first, or the file codes
    with the old tables (valid files, but larger: e.g. 1474 bytes instead of 137 after the
    quantiles moved by 3). They are not rebuilt here because a rebuild on another CPU can
    change their counts by one, and so the model id of a model loaded from a file.

    A file at ``path`` is replaced (atomically: an interrupted save leaves it whole); check
    first where that matters (``python/export_model.py`` refuses an existing file without
    ``--force``).

    ``info``: data stored with it, what :func:`load_model`'s safe loader
    (``torch.load(weights_only=True)``) reads back: dicts, lists, tuples, str, numbers, bool,
    None, tensors (not numpy values, paths or other objects).

    Raises:
        TypeError: ``model`` is not a :class:`SlimCAE` (:func:`load_model` rebuilds a SlimCAE
            from the file's config; save another model's ``state_dict`` with ``torch.save``).
        ValueError: ``info`` holds something else (a numpy number, a path, an object), named.
    """
    if not isinstance(model, SlimCAE):
        raise TypeError(f"save_model writes a SlimCAE (load_model rebuilds one from the file's "
                        f"config), got {type(model).__name__}: save your own model's state_dict "
                        f"with torch.save and load it with load_state_dict")
    if info is not None and not isinstance(info, dict):   # (dict(info)'s message named neither)
        raise ValueError(f"save_model: info must be a dict (or None), got {type(info).__name__}")
    why = _unloadable(dict(info or {}))
    if why is not None:   # (checked before writing: the file would not load, and replace one)
        where, what = _first_unloadable(dict(info or {}), "info")
        raise ValueError(f"{where} is a {what}, which load_model's safe loader cannot read "
                         f"({why}): give plain values in info (float(...), int(...), str, "
                         f"lists, dicts, tensors)")
    if not all(b.has_tables() for b in model.entropy_bottleneck.bottlenecks):
        model.update()
    # (the keys without torch.compile's wrapper: model.g_s = torch.compile(model.g_s) saved
    # "g_s._orig_mod.*" keys, a file load_model refused as damaged; the model id ignores it)
    sd = {_ORIG_MOD.sub(r"\1", k): (v.detach().float() if v.is_floating_point() else
                                    v.detach()).cpu().contiguous()
          for k, v in model.state_dict().items()}
    obj = {"format": "slimkernels-model", "config": model.config(), "state_dict": sd,
           "info": dict(info or {})}
    atomic_torch_save(obj, path)


def _unloadable(v) -> Optional[str]:
    """Why ``torch.load(weights_only=True)`` (:func:`load_model`'s safe loader) cannot read
    ``v`` back after ``torch.save``, or None when it can."""
    import io as _io
    buf = _io.BytesIO()
    try:
        torch.save(v, buf)
        buf.seek(0)
        torch.load(buf, weights_only=True)
    except Exception as e:   # noqa: BLE001 - any failure is the answer
        return _load_error(e)[:200]
    return None


def _first_unloadable(v, where: str, depth: int = 0):
    """``(where, type name)`` of the innermost value of ``v`` the safe loader refuses (for the
    message of :func:`save_model`), or ``(where, type of v)`` when no part of it alone is."""
    if depth < 20 and isinstance(v, (dict, list, tuple)):
        items = v.items() if isinstance(v, dict) else enumerate(v)
        for k, e in items:
            if isinstance(v, dict) and _unloadable(k) is not None:   # (a numpy key, say)
                return _first_unloadable(k, f"a key of {where} ({k!r})", depth + 1)
            if e is not v and _unloadable(e) is not None:
                return _first_unloadable(e, f"{where}[{k!r}]", depth + 1)
    t = type(v)
    return where, (t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}")


def _check_config_size(cfg: Dict, sd: Dict) -> None:
    """ValueError when the model ``cfg`` describes would be far larger than the weights ``sd``
    holds (checked before the model is built: a forged config, widths [1500] in a 181 KB file,
    built a model of 1.4 GB, [10**9] failed in torch's allocator). A SlimCAE of widest width N
    holds at least 25 N^2 weights (one 5x5 conv of N -> N channels; a real file ~150 N^2) and,
    with K widths, at most ~(150 + K) N^2 + O(K N): so N^2 must be within the file's count / 25
    and K N^2 within 16x it."""
    widths = cfg.get("widths")
    if not isinstance(widths, (list, tuple)) or not widths or \
            not all(isinstance(w, int) and not isinstance(w, bool) for w in widths):
        return   # (SlimCAE names what is wrong with them)
    held = sum(t.numel() for t in sd.values() if isinstance(t, torch.Tensor))
    n = max(widths)
    if 25 * n * n > held or len(widths) * n * n > 16 * held:
        raise ValueError(f"its config describes widths {_short(widths)} (a model of more than "
                         f"{25 * n * n} weights), but it holds {held} values: the config does "
                         f"not belong to these weights")


def _short(widths) -> str:
    return str(list(widths)) if len(widths) <= 8 else f"[{widths[0]}, ... {len(widths)} widths]"


def _check_archive(path: str) -> None:
    """ValueError naming ``path`` when it is a zip archive (what ``torch.save`` writes) that is
    damaged (:func:`slimkernels.io.torch_archive_problem`: torch's reader does not check the
    members' CRC-32, so a flipped bit in a weight loaded silently, and files of the original
    model were then refused as written by another)."""
    problem = torch_archive_problem(path)
    if problem is not None:
        raise ValueError(f"{path} is a damaged model file: {problem} (changed on disk or in "
                         f"transfer); copy it again, or write it again with "
                         f"slimkernels.pretrained.save_model")


def load_model(path: Optional[str] = None, device: str = "cpu", *,
               weights: str = "ema") -> SlimCAE:
    """Load a model file (default: the bundled model) in eval mode, CDF tables ready.

    Also accepts a training checkpoint (``{"model": state_dict, "config": ...}``) from
    ``python/train.py``. Its weight average's CDF tables are those the trainer saved with it
    (the same on every machine); a checkpoint without them (an older one, or with
    ``weights="train"`` when the training weights' tables were never built) gets tables built
    on load, from float arithmetic whose last bits depend on the CPU: their counts can differ
    by one between machines, and so can the model id, so files written with such a model may be
    refused elsewhere. A model file (:func:`save_model`, ``python/export_model.py``) always
    stores its tables: share files written with one. ``weights`` picks, for a checkpoint
    that keeps a moving average of its weights (the trainer's ``ema``), the average (``"ema"``,
    default: what the trainer validates) or the training weights (``"train"``); a checkpoint
    without an average (``--ema 0``) and a model file hold one set of weights, which both give.
    ``device``: where the model's parameters go (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a
    ``torch.device``); the file is read on the CPU first.

    Raises:
        MissingFileError: no file at ``path`` (or no bundled model in this install); a
            FileNotFoundError and a ValueError (:class:`slimkernels.io.MissingFileError`).
        ValueError: the file is not a slimkernels model, or a damaged one (named, with what is
            wrong: its config, a tensor's type or shape, its CDF tables), or not a regular file
            (a FIFO, a socket, a device: refused before any read); ``device`` is not a
            device name, or names a GPU that torch cannot use here.
    """
    device = check_device(device)
    if device.type == "cpu":   # (a parallel op in a fork()ed child waited for good)
        one_thread_in_forked_child("load_model")
    with torch.inference_mode(False):
        # (built, loaded and its tables written as normal tensors under an outer
        # torch.inference_mode(): inference tensors have no version counters, so every cache
        # keyed by the weights' state missed at every call, ~45x slower)
        return _load_model(path, device, weights)


def _load_model(path, device: torch.device, weights) -> SlimCAE:
    # (device: checked by load_model)
    if path is None:
        path = bundled_model_path()
        if path is None:
            raise MissingFileError("this install has no bundled pretrained model "
                                    f"({DEFAULT_MODEL}); pass a model file with --model")
    if weights not in ("ema", "train"):   # (before the file is read)
        raise ValueError(f"weights must be 'ema' or 'train', got {weights!r}")
    if not os.path.exists(path):
        raise MissingFileError(f"model file {path} does not exist")
    refuse_special_file(path, "pass the model file itself")   # (before the archive is read)
    _check_archive(path)
    obj = load_torch_file(path, "{path} is not a readable model file ({error})")
    model_file = isinstance(obj, dict) and obj.get("format") == "slimkernels-model"
    if not model_file and not (isinstance(obj, dict) and "model" in obj and "config" in obj):
        raise ValueError(f"{path} is not a slimkernels model file or training checkpoint")
    averaged = ema = False
    try:
        if model_file:
            cfg, sd = obj["config"], obj["state_dict"]
        else:  # training checkpoint
            cfg = {"widths": obj["config"]["widths"], "gdn": obj["config"]["gdn"]}
            sd = obj["model"]
            if weights == "ema" and obj.get("ema") is not None:
                sd = {**sd, **obj["ema"]}
                averaged = ema = True
                tables = obj.get("ema_tables")
                if isinstance(tables, dict) and tables and set(tables) <= set(sd):
                    # the trainer's tables of the average: the same on every machine (built
                    # here, their counts could differ by one with the CPU's vector unit)
                    sd = {**sd, **tables}
                    averaged = False
        if not isinstance(cfg, dict) or not isinstance(sd, dict):
            raise TypeError("its config and state_dict must be dicts")
        _check_config_size(cfg, sd)
        # (float32 whatever torch.set_default_dtype says: the files hold float32 weights, and
        # a float64 default built a model that refused to compress)
        model = SlimCAE(**cfg).float()
    except (KeyError, TypeError, ValueError) as e:
        # (a config of bad widths / gdn was SlimCAE's ValueError, without the file's name)
        raise ValueError(f"{path} is a damaged slimkernels model file ({type(e).__name__}: {e}); "
                         f"write it again with slimkernels.pretrained.save_model") from None
    wrong = state_dict_misfit(model, sd)
    if wrong is not None:   # (torch's load_state_dict error listed every key: kilobytes)
        raise ValueError(f"{path} does not match the model its config describes ({wrong}): a "
                         f"damaged or foreign file")
    if ema:   # (an average of some weights only mixed averaged and training weights)
        missing = sorted(set(dict(model.named_parameters())) - set(obj["ema"]))
        if missing:
            raise ValueError(f"{path} is a damaged training checkpoint: its weight average "
                             f"lacks {len(missing)} parameter(s) (e.g. {missing[:3]}); load it "
                             f"with weights='train'")
    try:   # (the entropy models check the CDF tables they load: they had loaded, and
        model.load_state_dict(sd)   # compress failed with the coder's message)
    except (ValueError, RuntimeError) as e:   # (RuntimeError: torch's, e.g. a sparse tensor)
        raise ValueError(f"{path} is a damaged slimkernels model file "
                         f"({str(e).strip().splitlines()[-1].strip()}); write it again with "
                         f"slimkernels.pretrained.save_model") from None
    model = model.to(device).eval()
    if averaged or not all(b.has_tables() for b in model.entropy_bottleneck.bottlenecks):
        # (the tables of an averaged entropy model that an older checkpoint holds
        # no tables for are built from it, here)
        try:
            model.update()
        except ValueError as e:   # (diverged quantiles: the file was not named)
            raise ValueError(f"{path}: {e}") from None
    return model


def model_info(path: Optional[str] = None) -> Dict:
    """The ``info`` dict stored with a model file (training steps, lambdas, Kodak results...);
    ``{}`` when ``path`` is None and no model is bundled.

    Raises:
        MissingFileError: ``path`` does not exist (a FileNotFoundError and a ValueError).
        ValueError: ``path`` is not a file, is not a readable model file, or its ``info`` is
            not a dict."""
    path = path or bundled_model_path()
    if path is None:
        return {}
    if not os.path.isfile(path):   # (a bare FileNotFoundError from torch.load before)
        err = ValueError if os.path.exists(path) else MissingFileError
        raise err(f"{path} does not exist or is not a file: pass a model file "
                  f"(slimkernels.pretrained.save_model)")
    obj = load_torch_file(path, "{path} is not a readable model file ({error})")
    if not isinstance(obj, dict):   # (a list or None read as {})
        raise ValueError(f"{path} is not a slimkernels model file (it holds a "
                         f"{type(obj).__name__})")
    info = obj.get("info", {})
    if not isinstance(info, dict):   # (a list was dict()'s "cannot convert dictionary update")
        raise ValueError(f"{path} is a damaged slimkernels model file: its info is a "
                         f"{type(info).__name__}, not a dict")
    return dict(info)
