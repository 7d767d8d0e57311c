#!/usr/bin/env python
"""Accelerate a CompressAI model: swap its GDN / IGDN layers for slimkernels' SlimGDN.

SlimGDN stores its parameters exactly like CompressAI's ``GDN`` (same state_dict keys and
reparameterization), so each layer's state_dict loads as is. On CUDA the swapped layers run the
fused Triton kernels; on CPU a GEMM-based PyTorch path. The script checks that the swapped model
gives the same outputs as the original (analysis, synthesis and the full forward pass) and prints
the time of both.

    python python/accelerate_compressai.py [--arch factorized|hyperprior] [--N 128 --M 192]
        [--checkpoint state_dict.pth] [--size 256] [--device cpu|cuda]
    python python/accelerate_compressai.py --tiny          # small random model (CI)

Without compressai installed it prints why and exits 0 (a skip).
"""
import argparse
import copy
import importlib
import importlib.util
import os
import statistics
import sys
import time
import types

import torch

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkernels.io import load_torch_file  # noqa: E402
from slimkernels.nn import SlimGDN  # noqa: E402


def import_compressai_models():
    """``compressai.models`` (None when compressai is not installed).

    When the package's ``__init__`` cannot be imported (it pulls optional dependencies such as
    requests, torchvision or torch_geometric), the model source files are loaded under stub
    ``compressai`` / ``compressai.models`` / ``compressai.registry`` modules instead.
    """
    for name in ("compressai.models", "compressai.models.google"):
        loaded = sys.modules.get(name)   # (imported, or loaded under the stubs: an earlier call)
        if loaded is not None and hasattr(loaded, "FactorizedPrior"):
            return loaded
    try:
        spec = importlib.util.find_spec("compressai")
    except ValueError:   # a stub 'compressai' without a spec (other code's): look on the path
        for k in [k for k in sys.modules if k == "compressai" or k.startswith("compressai.")]:
            del sys.modules[k]
        spec = importlib.util.find_spec("compressai")
    if spec is None:
        return None
    try:
        models = importlib.import_module("compressai.models")
        if hasattr(models, "FactorizedPrior"):
            return models
        # a stub 'compressai.models' left by other code in this process: load the files anew
    except ImportError as e:
        print(f"(the compressai package does not import here: {e}; loading its model files "
              "without the package __init__)")
    for k in [k for k in sys.modules if k == "compressai" or k.startswith("compressai.")]:
        del sys.modules[k]
    root = list(spec.submodule_search_locations)[0]
    for name in ("compressai", "compressai.models"):
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(root, *name.split(".")[1:])]
        sys.modules[name] = mod
    sys.modules["compressai"].get_entropy_coder = lambda: "ans"
    sys.modules["compressai"].available_entropy_coders = lambda: ["ans"]
    registry = types.ModuleType("compressai.registry")   # decorators that register nothing

    def _decorator_factory(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *a, **k: (lambda obj: obj)

    registry.__getattr__ = _decorator_factory
    sys.modules["compressai.registry"] = registry
    return importlib.import_module("compressai.models.google")


def swap_gdn(model: torch.nn.Module) -> int:
    """Replace every CompressAI ``GDN`` in ``model`` (in place) by a ``SlimGDN`` holding the same
    state_dict. Returns the number of layers swapped."""
    n = 0
    for name, child in list(model.named_children()):
        if type(child).__name__ == "GDN" and hasattr(child, "gamma"):
            new = SlimGDN(child.beta.numel(), inverse=bool(child.inverse))
            new.load_state_dict(child.state_dict())   # same keys: beta, gamma, *_reparam.*
            setattr(model, name, new.to(child.beta.device))
            n += 1
        else:
            n += swap_gdn(child)
    return n


def randomize_gdn(model: torch.nn.Module, seed: int = 0) -> None:
    """Give the GDNs random (non-identity) effective parameters, so the check means something
    for an untrained model."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if type(m).__name__ == "GDN":
            C = m.beta.numel()
            beta = 0.5 + torch.rand(C, generator=g)
            gamma = 0.1 * torch.eye(C) + 0.02 * torch.rand(C, C, generator=g)
            with torch.no_grad():
                m.beta.copy_(m.beta_reparam.init(beta.to(m.beta.device)))
                m.gamma.copy_(m.gamma_reparam.init(gamma.to(m.gamma.device)))


def median_ms(fn, reps: int) -> float:
    fn()                                              # warm-up (autotuning, caches)
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def load_checkpoint(model: torch.nn.Module, path: str) -> str:
    """Load the state_dict at ``path`` into ``model``; ``""`` on success, else what is wrong,
    in one line: the file, its type, the keys it lacks or has beyond the model's (a few of
    each), or the first parameter whose shape differs (another N / M)."""
    if not os.path.exists(path):
        return "FileNotFoundError: no such file"
    try:   # (tensors and plain containers only; what is wrong with a file that is not one torch
        sd = load_torch_file(path, "{error}")   # wrote: a text file said "KeyError: 105")
    except ValueError as e:
        return str(e)
    if not isinstance(sd, dict):
        return f"holds a {type(sd).__name__}, not a state_dict"
    try:   # (CompressAI's own load_state_dict renames an older release's entropy-model keys)
        model.load_state_dict(sd)
    except Exception as e:  # noqa: BLE001 - other keys, shapes of another N / M
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        if lines:
            return lines[0] + " (other --N / --M?)"
        want = set(model.state_dict())
        missing, unexpected = sorted(want - set(sd)), sorted(set(sd) - want)
        if missing or unexpected:
            return (f"{len(missing)} missing key(s) (e.g. {missing[:3]}), {len(unexpected)} "
                    f"unexpected (e.g. {unexpected[:3]}): a state_dict of another architecture "
                    f"(--arch)?")
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="factorized", choices=["factorized", "hyperprior"])
    p.add_argument("--N", type=int, default=128)
    p.add_argument("--M", type=int, default=192)
    p.add_argument("--checkpoint", default=None, help="a state_dict for the model (default: "
                                                       "random weights)")
    p.add_argument("--size", type=int, default=256, help="test image side (multiple of 64)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tiny", action="store_true", help="N=16, M=24, 64x64 image, 1 rep (CI)")
    args = p.parse_args(argv)
    if args.tiny:
        args.N, args.M, args.size, args.reps = 16, 24, 64, 1
    for name, top in (("N", 1024), ("M", 1024), ("reps", 1000)):   # (huge ones: the
        v = getattr(args, name)                                      # allocator's traceback)
        if not 1 <= v <= top:
            p.error(f"--{name} {v}: must be " + (">= 1" if v < 1 else f"at most {top}"))
    if args.size < 64 or args.size % 64 or args.size > 4096:
        p.error(f"--size {args.size}: must be a positive multiple of 64, at most 4096")
    try:
        device = torch.device(args.device)
    except RuntimeError:   # ("CPU", "foo": torch's own traceback; "meta" failed later)
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        p.error(f"--device {args.device}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is available to this torch; use cpu")

    models = import_compressai_models()
    if models is None:
        print("SKIP: compressai is not installed (pip install compressai); nothing to accelerate")
        return 0
    cls = {"factorized": models.FactorizedPrior, "hyperprior": models.ScaleHyperprior}[args.arch]
    torch.manual_seed(0)
    ref = cls(args.N, args.M)
    if args.checkpoint:
        problem = load_checkpoint(ref, args.checkpoint)
        if problem:
            print(f"accelerate_compressai.py: error: --checkpoint {args.checkpoint}: {problem}",
                  file=sys.stderr)
            return 1
    else:
        randomize_gdn(ref)
    ref = ref.to(args.device).eval()
    fast = copy.deepcopy(ref)
    n = swap_gdn(fast)
    print(f"CompressAI {cls.__name__}(N={args.N}, M={args.M}) on {args.device}: swapped {n} GDN "
          "layers for slimkernels.nn.SlimGDN")
    if n == 0:
        print("FAIL: the model has no GDN layers")
        return 1

    x = torch.rand(1, 3, args.size, args.size, device=args.device)
    # fp32 on CPU: ~1e-5 relative; on CUDA the kernels use TF32 tensor cores (~1e-3)
    tol = 1e-3 if x.device.type == "cuda" else 1e-5
    ok = True
    with torch.no_grad():
        checks = [("g_a (analysis)", lambda m: m.g_a(x)),
                  ("g_s (synthesis)", lambda m: m.g_s(ref.g_a(x).round())),
                  ("forward x_hat", lambda m: m(x)["x_hat"])]
        print(f"{'output':<16} {'max |diff|':>11} {'max |ref|':>10} {'rel':>9}  {'ref ms':>8} "
              f"{'slim ms':>8} {'speed-up':>8}")
        for name, f in checks:
            a, b = f(ref).double(), f(fast).double()
            diff, scale = float((a - b).abs().max()), float(a.abs().max())
            rel = diff / max(scale, 1e-30)
            good = bool(torch.isfinite(b).all()) and rel <= tol
            ok &= good
            t_ref = median_ms(lambda: f(ref), args.reps)
            t_fast = median_ms(lambda: f(fast), args.reps)
            print(f"{name:<16} {diff:11.3e} {scale:10.3e} {rel:9.2e}  {t_ref:8.2f} {t_fast:8.2f} "
                  f"{t_ref / t_fast:7.2f}x  {'ok' if good else 'MISMATCH'}")
    print(f"PASS: the swapped model matches CompressAI's outputs (relative error <= {tol:g})"
          if ok else f"FAIL: outputs differ by more than {tol:g} (relative to the largest output)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
