#!/usr/bin/env python
"""Evaluate a SlimCAE on an image folder (Kodak): RD table, CompressAI-style JSON, RD plot.

    python python/evaluate.py ../shared/data/kodak --model runs/slimcae/checkpoint.pt --out results/
"""
import os
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkernels.evaluation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="evaluate.py"))
