#!/usr/bin/env python
"""Train a SlimCAE on a folder of images, all widths jointly.

Examples:
    python python/train.py --data ../shared/data/train --out runs/slimcae --steps 200000
    python python/train.py --schedule --schedule-start 50000 --schedule-steps 5000 ...
    torchrun --nproc_per_node 2 python/train.py --device cuda ...

Resumes from ``<out>/checkpoint.pt`` when it exists; logs to ``<out>/log.jsonl``.
"""
import os
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkernels.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
