"""Command line of the trainer (``python python/train.py`` and ``slimkernels train``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional

from .._argparse import split_list
from .._lines import Lines
from ..io import MissingFileError
from .trainer import TrainConfig, Trainer


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Add one ``--option`` per :class:`TrainConfig` field."""
    p = parser or argparse.ArgumentParser(description="Train a SlimCAE (all widths jointly).")
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = "--" + f.name.replace("_", "-")
        doc = f.metadata.get("help", "") + (" (default: none)" if default == "" else
                                             " (default: %(default)s)")
        if f.metadata.get("auto_bool"):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default,
                           help=f.metadata.get("help", "") + " (default: unset)")
        elif isinstance(default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default,
                           help=f.metadata.get("help", "") + f" (default: {'on' if default else 'off'})")
        elif isinstance(default, list):
            p.add_argument(name, nargs="+", action=split_list(type(default[0])),
                           default=default,
                           help=doc.replace("%(default)s", " ".join(map(str, default))))
        elif default is None and f.metadata.get("arg_type") is not None:   # (unset: resolved
            many = str(f.type).startswith("Optional[List")                   # by the trainer)
            kw = ({"action": split_list(f.metadata["arg_type"])} if many else
                  {"type": f.metadata["arg_type"]})
            p.add_argument(name, nargs="+" if many else None, default=None, **kw,
                           help=f.metadata.get("help", "") + " (default: unset)")
        else:
            p.add_argument(name, type=f.metadata.get("arg_type") or type(default),
                           default=default, choices=f.metadata.get("choices"), help=doc)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed arguments (one attribute per config field)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def _env_int(name: str, default: str, lo: int) -> int:
    """The int in environment variable ``name`` (set by torchrun), ``default`` when unset;
    ValueError naming it otherwise (``WORLD_SIZE=abc`` said only "invalid literal for int()")."""
    text = os.environ.get(name, default)
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < lo:
        raise ValueError(f"${name}={text!r} must be an integer >= {lo} (torchrun sets it; unset "
                         f"it for a run in one process)")
    return v


def run(cfg: TrainConfig) -> int:
    """Train ``cfg``; under ``torchrun`` (``WORLD_SIZE`` > 1) inside a process group (NCCL on
    CUDA, gloo on CPU), each rank on its local GPU. Returns 0 when the run reached
    ``cfg.steps``, 128 + the signal's number (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP)
    when a signal stopped it (its checkpoint saved: the same command resumes it), as a shell
    reports a process a signal ended, so that ``train && export`` does not export an unfinished model;
    raises what the trainer raises."""
    if not os.path.isdir(cfg.data):   # (before the Trainer makes the run folder: none left)
        where = "" if os.path.isabs(cfg.data) else f" (relative to {os.getcwd()})"
        if not os.path.exists(cfg.data):
            raise MissingFileError(f"--data {cfg.data}: the image folder does not exist{where}")
        raise ValueError(f"--data {cfg.data}: a file, not a folder of images")
    world = _env_int("WORLD_SIZE", "1", 1)
    if world > 1:  # launched by torchrun
        import torch
        import torch.distributed as dist
        backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if cfg.device.startswith("cuda"):
            local = _env_int("LOCAL_RANK", "0", 0)
            torch.cuda.set_device(local)
            cfg.device = f"cuda:{local}"
    try:
        # (its lines never fail the run: with stdout a closed pipe, `train | tee log` after
        # Ctrl-C or `| head`, the stop line raised BrokenPipeError: exit 1, not 130)
        trainer = Trainer(cfg, log=Lines())
        trainer.fit()
    finally:
        if world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()
    return 0 if trainer.stopped_by is None else 128 + int(trainer.stopped_by)


def main(argv: Optional[List[str]] = None) -> int:
    """``python python/train.py``: parse, tune malloc, :func:`run`. A bad option or file, or a
    loss that is not finite, ends with a one-line error on stderr and exit code 1; SIGINT /
    SIGTERM / SIGHUP with 130 / 143 / 129 after saving the checkpoint (see :func:`run`)."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from ..allocator import tune_from_env
    tune_from_env()   # the weight gradients' fresh 10-20 MB buffers: no page faults (allocator.py)
    try:
        return run(cfg)
    except KeyboardInterrupt:   # (before the trainer's own SIGINT handling: 128 + SIGINT too)
        print("train: interrupted", file=sys.stderr)
        return 130
    except ValueError as e:   # (its messages name the option and what to do)
        print(f"train: error: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, OSError, FloatingPointError) as e:
        print(f"train: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
