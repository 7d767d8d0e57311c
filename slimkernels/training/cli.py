"""Command line of the trainer (``python python/train.py`` and ``slimkernels train``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import List, Optional

from .trainer import TrainConfig, Trainer


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    """Add one ``--option`` per :class:`TrainConfig` field."""
    p = parser or argparse.ArgumentParser(description="Train a SlimCAE (all widths jointly).")
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name = "--" + f.name.replace("_", "-")
        doc = f.metadata.get("help", "") + " (default: %(default)s)"
        if f.metadata.get("auto_bool"):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default,
                           help=f.metadata.get("help", "") + " (default: unset)")
        elif isinstance(default, bool):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default,
                           help=f.metadata.get("help", "") + f" (default: {'on' if default else 'off'})")
        elif isinstance(default, list):
            p.add_argument(name, nargs="+", type=type(default[0]), default=default,
                           help=doc.replace("%(default)s", " ".join(map(str, default))))
        else:
            p.add_argument(name, type=type(default), default=default, help=doc)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    from ..allocator import tune_from_env
    tune_from_env()   # the weight gradients' fresh 10-20 MB buffers: no page faults (allocator.py)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:  # launched by torchrun
        import torch
        import torch.distributed as dist
        backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if cfg.device.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            cfg.device = f"cuda:{local}"
    try:
        Trainer(cfg).fit()
    finally:
        if world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()
    return 0
