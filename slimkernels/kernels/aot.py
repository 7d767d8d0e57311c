"""Ahead-of-time compilation of Triton kernels for a GPU that is not present.

GPU quality (registers, spills, shared memory, tensor-core instructions) can be checked on a machine
without a GPU: Triton compiles to PTX and runs ``ptxas`` itself; the wheel also ships ``cuobjdump``
and ``nvdisasm`` (in ``triton/backends/nvidia/bin``). :func:`compile_for_target` wraps that.

It must run WITHOUT ``TRITON_INTERPRET=1`` (in interpreter mode ``triton.jit`` returns an
interpreted function that cannot be compiled). Tests therefore call it in a subprocess with
``TRITON_INTERPRET=0``; see :func:`run_in_subprocess`.

Example::

    from slimkernels.kernels.aot import compile_for_target
    info = compile_for_target(my_kernel,
                              {"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                              {"BLOCK": 128}, arch=90, num_warps=4, num_stages=3)
    assert info["spill_ops"] == 0 and "HMMA" in info["sass"]
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Dict, Mapping, Optional

#: shared memory a single thread block may use, bytes (opt-in maximum), per compute capability
SMEM_LIMIT_PER_BLOCK = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
#: registers per thread limit
MAX_REGS_PER_THREAD = 255


def _bin(tool: str) -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def _ptxas_candidates(arch: int):
    """The ptxas binaries that may assemble PTX for ``arch`` (triton picks per arch)."""
    paths = []
    try:  # triton >= 3.4 ships two ptxas and chooses by arch
        from triton.backends.nvidia.compiler import get_ptxas
        paths.append(get_ptxas(arch).path)
    except Exception:  # pragma: no cover - older triton
        pass
    for name in ("ptxas", "ptxas-blackwell"):
        p = _bin(name)
        if os.path.exists(p) and p not in paths:
            paths.append(p)
    return paths


def _ptxas_usage(ptx: str, arch: int) -> Dict[str, int]:
    """Re-assemble ``ptx`` with ptxas -v (for the arch in its ``.target``) and parse the usage."""
    m = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    if m is None:
        raise ValueError("the PTX has no .target line; cannot tell which arch to assemble for")
    errors = []
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        for exe in _ptxas_candidates(arch):
            res = subprocess.run([exe, "-v", f"--gpu-name={m.group(1)}", src,
                                  "-o", os.path.join(d, "k.cubin")], capture_output=True, text=True)
            if res.returncode == 0:
                break
            errors.append(f"{exe}: {res.stderr.strip()}")
        else:
            raise RuntimeError(f"ptxas failed for {m.group(1)}:\n" + "\n".join(errors))
    log = res.stderr + res.stdout
    regs = re.search(r"Used (\d+) registers", log)
    st = re.search(r"(\d+) bytes spill stores", log)
    ld = re.search(r"(\d+) bytes spill loads", log)
    frame = re.search(r"(\d+) bytes stack frame", log)
    return {"n_regs": int(regs.group(1)) if regs else -1,
            "n_spills": (int(st.group(1)) if st else 0) + (int(ld.group(1)) if ld else 0),
            "stack": int(frame.group(1)) if frame else 0, "ptxas_log": log}


def _cubin_usage(cubin: bytes) -> Dict[str, int]:
    """Registers, local memory and stack of the cubin triton built, from ``cuobjdump
    -res-usage`` (spills show as ``STACK``; ``LOCAL`` stays 0 for them)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([_bin("cuobjdump"), "-res-usage", path], capture_output=True,
                             text=True).stdout
    reg = re.search(r"REG:(\d+)", out)
    loc = re.search(r"LOCAL:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    return {"n_regs": int(reg.group(1)) if reg else -1, "local": int(loc.group(1)) if loc else 0,
            "stack": int(stack.group(1)) if stack else 0}


def local_memory_ops(sass: str) -> int:
    """Instructions of ``sass`` that store to or load from local memory (``STL``, ``LDL`` with
    any suffix, e.g. ``LDL.LU``): register spills of the binary itself (the kernels use no local
    arrays). Authoritative where a re-run of ptxas is not: triton assembles with options of its
    own (``-lineinfo --regAllocOptLevel=2`` in 3.9), and a GDN backward config spilled 4 bytes
    in triton's cubin while ``ptxas -v`` without them reported none."""
    return len(re.findall(r"\b(?:STL|LDL)(?:\.[\w.]+)?\s", sass))


def _make_source(kernel, signature: Mapping[str, str], constexprs: Mapping[str, Any],
                 divisible_by_16=()):
    """Build an ``ASTSource`` for the Triton version at hand.

    Triton >= 3.2 wants every parameter in ``signature`` (constexpr ones typed ``"constexpr"``)
    and ``constexprs`` keyed by name. Older 3.x versions took ``constants=`` instead.
    """
    import inspect

    from triton.compiler import ASTSource
    sig = dict(signature)
    for name in constexprs:
        sig.setdefault(name, "constexpr")
    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:
        # what the JIT launcher adds for 16-byte aligned pointers / ints divisible by 16
        attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible_by_16}
        if "attrs" in params:
            return ASTSource(fn=kernel, signature=sig, constexprs=dict(constexprs), attrs=attrs)
        return ASTSource(fn=kernel, signature=sig, constexprs=dict(constexprs))
    # triton 3.0 / 3.1: constants keyed by name, constexpr args left out of the signature
    sig = {k: v for k, v in sig.items() if v != "constexpr"}
    names = kernel.arg_names
    sig = {names.index(k): v for k, v in sig.items()}
    return ASTSource(fn=kernel, signature=sig, constants=dict(constexprs))  # pragma: no cover


def compile_for_target(kernel, signature: Mapping[str, str], constexprs: Mapping[str, Any],
                       arch: int, *, num_warps: int = 4, num_stages: int = 3,
                       divisible_by_16=(), extra_options: Optional[Mapping[str, Any]] = None
                       ) -> Dict[str, Any]:
    """Compile a ``@triton.jit`` kernel for ``sm_<arch>`` without a GPU and report its resources.

    Args:
        kernel: a ``triton.JITFunction`` (the raw kernel, not an ``Autotuner``; pass
            ``autotuned.fn`` for an autotuned one). Must not be an interpreted function.
        signature: type of every runtime parameter, by name: ``"*fp32"``, ``"*bf16"``, ``"i32"``,
            ``"fp32"``, ... Constexpr parameters may be left out (they are typed ``"constexpr"``).
        constexprs: value of every ``tl.constexpr`` parameter, by name (the autotune config's
            ``kwargs`` plus the launcher's constexprs).
        arch: compute capability as an int, e.g. ``90`` (H100) or ``80`` (A100).
        num_warps, num_stages: as in a ``triton.Config``.
        divisible_by_16: names of parameters the JIT launcher would mark ``tt.divisibility=16``
            (pointers from torch allocations are 16-byte aligned; ints that are multiples of 16).
            Ints equal to 1 are specialised by the launcher as constexprs: pass them in
            ``constexprs`` to compile that variant (e.g. ``{"stride_c": 1}`` for channels_last).
        extra_options: more compiler options (e.g. ``{"maxnreg": 128}``).

    Returns:
        dict with ``n_regs`` (registers per thread of the cubin triton built, from cuobjdump),
        ``n_spills`` (bytes spilled, stores + loads, from re-running ``ptxas -v`` on the PTX:
        an estimate, triton's own ptxas options differ), ``spill_ops`` (local-memory
        instructions in the SASS of the cubin triton built: its spills; see
        :func:`local_memory_ops`), ``local`` (local-memory bytes of the cubin),
        ``cubin_stack`` (stack bytes of the cubin triton built: > 0 with spills),
        ``shared`` (bytes of shared memory per block), ``sass`` (disassembly, str), ``ptx`` (str),
        ``ttgir`` (triton's GPU IR, str: shared-memory buffers and the pipelining),
        ``stack`` (stack frame bytes), ``arch``, ``num_warps``, ``num_stages``, ``ptxas_log``.

    Raises:
        ValueError: a constexpr or signature entry is missing / unknown, or interpreter mode.
        RuntimeError: ptxas failed.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    if not hasattr(kernel, "arg_names") or type(kernel).__name__ == "InterpretedFunction":
        raise ValueError("compile_for_target needs a real triton.JITFunction: unset "
                         "TRITON_INTERPRET (run it in a subprocess with TRITON_INTERPRET=0)")
    missing = [a for a in kernel.arg_names if a not in signature and a not in constexprs]
    if missing:
        raise ValueError(f"compile_for_target: no type or value given for parameters {missing} "
                         f"of {kernel.__name__}")
    unknown = [n for n in divisible_by_16 if n not in kernel.arg_names]
    if unknown:
        raise ValueError(f"compile_for_target: divisible_by_16 names unknown parameters {unknown}")
    src = _make_source(kernel, signature, constexprs, tuple(divisible_by_16))
    options = {"num_warps": num_warps, "num_stages": num_stages}
    options.update(extra_options or {})
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    ptx = compiled.asm["ptx"]
    usage = _ptxas_usage(ptx, arch)
    cub = _cubin_usage(compiled.asm["cubin"])
    try:
        sass = compiled.asm["sass"]
    except Exception:  # older triton: disassemble the cubin ourselves
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "k.cubin")
            with open(path, "wb") as f:
                f.write(compiled.asm["cubin"])
            sass = subprocess.run([_bin("cuobjdump"), "-sass", path], capture_output=True,
                                  text=True, check=True).stdout
    n_regs = cub["n_regs"] if cub["n_regs"] >= 0 else usage["n_regs"]
    return {"n_regs": n_regs, "n_spills": usage["n_spills"], "stack": usage["stack"],
            "spill_ops": local_memory_ops(sass), "local": cub["local"],
            "cubin_stack": cub["stack"],
            "shared": int(compiled.metadata.shared), "sass": sass, "ptx": ptx,
            "ttgir": compiled.asm.get("ttgir", ""), "arch": arch,
            "num_warps": num_warps, "num_stages": num_stages, "ptxas_log": usage["ptxas_log"]}


def tensor_core_ops(sass: str) -> Dict[str, int]:
    """Count tensor-core instructions in SASS: ``{"HMMA": n, "HGMMA": n, "IMMA": n}``."""
    return {op: len(re.findall(rf"\b{op}\.", sass)) for op in ("HMMA", "HGMMA", "IMMA")}


def run_in_subprocess(code: str, timeout: float = 600.0) -> Any:
    """Run Python ``code`` in a fresh interpreter with ``TRITON_INTERPRET=0``; return its JSON.

    ``code`` must print one JSON document as the LAST line of its stdout.
    """
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"AOT subprocess failed (rc={res.returncode}):\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def wgmma_operand_depths(ttgir: str) -> Dict[str, Any]:
    """The shared-memory buffering of each Hopper ``warp_group_dot``'s operands in a TTGIR.

    Returns ``{"dots": [(depth_a, depth_b), ...], "max_pendings": int}``: per dot, how many
    pipeline buffers the allocation behind each shared-memory operand has (1 for a single
    buffer, 0 for an operand in registers or not traced to an allocation), and the largest
    ``pendings`` of the ``warp_group_dot_wait`` ops (>= 1: a wgmma stays in flight while the loop
    goes on, so each operand needs one buffer more than the copies run ahead).

    A dot whose two operands are buffered to different depths while wgmmas stay in flight is the
    hazard met in the GDN backward (triton 3.6 and 3.9): a tile that fed the dot and a reduction
    got one buffer fewer, and the next async copy overwrote it under the pending wgmma.
    """
    alloc_depth: Dict[str, int] = {}
    for m in re.finditer(r"(%[\w.#]+) = ttg\.local_alloc[^\n]*?-> !ttg\.memdesc<(\d+(?:x\d+)*)x\w+,",
                         ttgir):
        dims = [int(d) for d in m.group(2).split("x")]
        alloc_depth[m.group(1)] = dims[0] if len(dims) == 3 else 1
    view_of: Dict[str, str] = {}
    for m in re.finditer(r"(%[\w.#]+) = ttg\.memdesc_index (%[\w.#]+)\[", ttgir):
        view_of[m.group(1)] = m.group(2)

    def depth(name: str) -> int:
        seen = 0
        while name in view_of and seen < 16:
            name, seen = view_of[name], seen + 1
        return alloc_depth.get(name, 0)

    dots = [(depth(m.group(1)), depth(m.group(2)))
            for m in re.finditer(r"ttng\.warp_group_dot (%[\w.#]+), (%[\w.#]+),", ttgir)]
    pend = [int(p) for p in re.findall(r"warp_group_dot_wait[^\n]*\{pendings = (\d+)", ttgir)]
    return {"dots": dots, "max_pendings": max(pend, default=0)}
