#!/usr/bin/env python
"""In-process A/B of one dispatch switch (an UPPER_CASE constant of a ``slimkernels`` module) on
``compress`` / ``decompress`` of the bundled model, per width.

The switch is set to each value in turn, round after round, with the order of the values rotated
between rounds (over any n consecutive rounds of n values, each runs once in each place): a fixed
order biases the result (measured in sitting 35: a change that read 1.04-1.15x with "off"
always run before "on" read 1.00-1.02x with the order alternating; an A/A run, ``--values
True,True``, reads 0.98-1.00x: the noise floor on the 2-core VM). Each timed call comes right
after one untimed call of the same value (its steady state); the table gives the median per
value and the speed-up of the last value over the first. The CPU replays are keyed by the
switches, so every value keeps its own recording; the model's caches are cleared between widths
(a replay cache holds 8 recordings). Before the timing, the bytes of ``compress`` (and the
images of ``decompress``) are compared across the values: ``same`` in the table (a switch may
change them by design, e.g. another kernel's rounding).

    python bench/ab_switch.py AMX_CONV_GDN_WINDOWS --widths 48,72,96,144,192 --rounds 40
    python bench/ab_switch.py AMX_CONV_GDN_MAX_CHANNELS --values 72,256 --widths 144 --ops compress

For changes a switch cannot express (Python edits, other extension builds) see
``bench/ab_checkouts.py`` (one process per checkout) and ``bench/ab_builds.py``.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import os
import statistics
import sys
import time
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e import load_image  # noqa: E402  (bench/e2e.py also puts this checkout first on the path)

OPS = ("compress", "decompress")


SWITCH_TYPES = (bool, int, float, str)   # what --values can give (Python literals)


def switches(mod) -> List[str]:
    """The switches of ``mod``: its UPPER_CASE module constants of a literal type (bool, int,
    float, str), not other upper-case names such as ``F`` (``torch.nn.functional``)."""
    return sorted(n for n, v in vars(mod).items() if n.isupper() and not n.startswith("_")
                  and isinstance(v, SWITCH_TYPES))


def _switch_module(name: str, module: str):
    """The module holding the switch ``name``; SystemExit naming the problem otherwise."""
    if not name.isupper() or not name.replace("_", "").isalnum():
        raise SystemExit(f"ab_switch: {name!r} is not a switch name (an UPPER_CASE constant of "
                         f"{module}, e.g. CPU_AMX_CONV_WINDOWS)")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(f"ab_switch: cannot import {module}: {e}") from None
    if name not in switches(mod):
        what = (f"{module}.{name} is not a switch (a {type(getattr(mod, name)).__name__}, not a "
                f"bool, int, float or str)" if hasattr(mod, name) else
                f"{module} has no switch {name}")
        raise SystemExit(f"ab_switch: {what}; it has: {', '.join(switches(mod))}")
    return mod


def _values(text: str, current) -> List:
    """The values to compare (Python literals, comma-separated); default ``[False, True]`` for
    a boolean switch. At least two, each of the switch's type."""
    if text is None:
        if not isinstance(current, bool):
            raise SystemExit(f"ab_switch: the switch is {current!r}, not a bool: give --values")
        return [False, True]
    try:
        vals = [ast.literal_eval(v.strip()) for v in text.split(",")]
    except (ValueError, SyntaxError):
        raise SystemExit(f"ab_switch: --values {text!r}: give comma-separated Python literals, "
                         f"e.g. False,True or 72,256") from None
    if len(vals) < 2:
        raise SystemExit("ab_switch: --values needs at least two values")
    bad = [v for v in vals if type(v) is not type(current)]
    if bad:
        raise SystemExit(f"ab_switch: --values {bad} are not of the switch's type "
                         f"({type(current).__name__}, now {current!r})")
    return vals


def rotation(n: int, r: int) -> List[int]:
    """The order of the ``n`` values in round ``r``: ``r, r + 1, ...`` modulo ``n``, so that over
    any ``n`` consecutive rounds each value runs once in each position."""
    return [(r + i) % n for i in range(n)]


def compare(name: str, values: Sequence, widths: Sequence[int], ops: Sequence[str] = OPS,
            rounds: int = 30, threads: int = 2, module: str = "slimkernels.ops.conv",
            image=None, precision: str = "auto", model=None) -> List[Dict]:
    """Rows ``{width, op, ms: [median per value], speedup (first / last), same}``; the switch is
    restored afterwards. ``image``: a ``[1, 3, H, W]`` tensor (default: kodim01, bench/e2e.py);
    ``model``: a SlimCAE (default: the bundled one)."""
    import torch

    from slimkernels import allocator
    mod = _switch_module(name, module)
    if model is None:
        from slimkernels.pretrained import load_model
        model = load_model()
    x = load_image() if image is None else image
    allocator.tune_malloc()
    saved_threads, saved = torch.get_num_threads(), getattr(mod, name)
    torch.set_num_threads(threads)
    rows = []
    try:
        for w in widths:
            model.clear_caches()
            data = model.compress(x, w, precision=precision)
            calls = {"compress": lambda: model.compress(x, w, precision=precision),
                     "decompress": lambda: model.decompress(data, precision=precision)}
            for op in ops:
                f = calls[op]
                outs = []
                for v in values:
                    setattr(mod, name, v)
                    outs.append(f())
                same = all((o == outs[0]) if op == "compress" else torch.equal(o, outs[0])
                           for o in outs[1:])
                times: Dict[int, List[float]] = {i: [] for i in range(len(values))}
                for r in range(rounds):
                    for i in rotation(len(values), r):
                        setattr(mod, name, values[i])
                        f()
                        t = time.perf_counter()
                        f()
                        times[i].append(time.perf_counter() - t)
                ms = [statistics.median(times[i]) * 1e3 for i in range(len(values))]
                rows.append({"width": w, "op": op, "ms": ms, "speedup": ms[0] / ms[-1],
                             "same": same})
    finally:
        setattr(mod, name, saved)
        torch.set_num_threads(saved_threads)
        model.clear_caches()
    return rows


def table(name: str, values: Sequence, rows: List[Dict]) -> str:
    """The Markdown table of :func:`compare`'s rows."""
    head = " | ".join(f"{name}={v!r} ms" for v in values)
    out = [f"| width | op | {head} | speed-up ({values[-1]!r} over {values[0]!r}) | same |",
           "|" + " --- |" * (len(values) + 4)]
    for r in rows:
        cells = " | ".join(f"{m:.3f}" for m in r["ms"])
        out.append(f"| {r['width']} | {r['op']} | {cells} | {r['speedup']:.3f}x | "
                   f"{'yes' if r['same'] else 'no'} |")
    return "\n".join(out)


def add_run_options(ap: argparse.ArgumentParser, widths: str, rounds: int,
                    rounds_help: str) -> None:
    """The options this tool shares with bench/width_scaling.py: ``--widths`` (default
    ``widths``), ``--ops``, ``--rounds`` (default ``rounds``), ``--threads``, ``--precision``,
    ``--image``."""
    ap.add_argument("--widths", default=widths,
                    help=f"comma-separated widths of the model (default {widths})")
    ap.add_argument("--ops", default="compress,decompress",
                    help="compress and / or decompress, comma-separated (default both)")
    ap.add_argument("--rounds", type=int, default=rounds,
                    help=f"{rounds_help} (default {rounds})")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                    help="the precision argument of compress / decompress (default auto)")
    ap.add_argument("--image", default=None, help="image file (default Kodak kodim01)")


def parse_ops(prog: str, text: str) -> List[str]:
    """``--ops``: a list of ``OPS``; SystemExit naming ``prog`` otherwise."""
    ops = [o.strip() for o in text.split(",")]
    if not ops or any(o not in OPS for o in ops):
        raise SystemExit(f"{prog}: --ops {text!r}: give compress and / or decompress")
    return ops


def check_run(prog: str, model, widths: Sequence[int], image_path):
    """SystemExit naming ``prog`` for widths the model lacks or a missing ``--image``; else
    the image ``[1, 3, H, W]`` (``--image``, default kodim01: bench/e2e.py)."""
    bad = [w for w in widths if w not in model.widths]
    if bad:
        raise SystemExit(f"{prog}: --widths {bad} are not the model's ({model.widths})")
    if image_path is not None and not os.path.exists(image_path):
        raise SystemExit(f"{prog}: --image {image_path}: no such file")
    return load_image(image_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,   # the whole docstring, as written
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("switch", help="the constant's name, e.g. CPU_AMX_CONV_WINDOWS")
    ap.add_argument("--module", default="slimkernels.ops.conv",
                    help="the module holding it (default slimkernels.ops.conv)")
    ap.add_argument("--values", default=None,
                    help="comma-separated Python literals (default False,True for a bool)")
    add_run_options(ap, "48,192", 30, "timed rounds per width and op, each value once a round")
    a = ap.parse_args(argv)
    mod = _switch_module(a.switch, a.module)
    values = _values(a.values, getattr(mod, a.switch))
    try:
        widths = [int(v) for v in a.widths.split(",")]
    except ValueError:
        raise SystemExit(f"ab_switch: --widths {a.widths!r}: give comma-separated widths, e.g. "
                         f"48,192") from None
    ops = parse_ops("ab_switch", a.ops)
    if a.rounds < 1 or a.threads < 1:
        raise SystemExit("ab_switch: --rounds and --threads must be at least 1")
    from slimkernels.pretrained import load_model
    model = load_model()
    image = check_run("ab_switch", model, widths, a.image)
    rows = compare(a.switch, values, widths, ops, a.rounds, a.threads, a.module, image,
                   a.precision, model)
    print(f"`python bench/ab_switch.py {' '.join(sys.argv[1:] if argv is None else argv)}`: "
          f"{a.rounds} rounds, {a.threads} thread(s), precision {a.precision}, value order "
          f"rotated per round\n")
    print(table(a.switch, values, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
