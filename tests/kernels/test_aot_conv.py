"""Ahead-of-time compilation of the conv kernels for sm_90 (H100) and sm_80 (A100), no GPU needed.

Each autotune config of :mod:`slimkernels.kernels.conv` is compiled (in a subprocess without
``TRITON_INTERPRET``) for the SlimCAE case it targets: bf16, channels_last activations and a
weight with unit input-channel stride as the no-grad path hands it over (passed as constexpr 1 as Triton's launcher
specializes them) and 16-divisible strides and widths (192/144/96/48). Checked: no register spills,
shared memory within the per-block limit, tensor-core instructions (HGMMA on sm_90 / HMMA on sm_80)
inside the main loop, and 128-bit global loads (``LDG.E.128``) for the activation tiles.

The normal run compiles one config per kernel and epilogue; ``-m slow`` compiles all of them.
"""
import json
import textwrap

import pytest

from slimkernels.backend import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton")

_CODE = textwrap.dedent(r'''
import json, re, sys
import triton.language as tl
from slimkernels.kernels import aot
from slimkernels.kernels import conv as K
from slimkernels.kernels.configs import CONV_FWD_CONFIGS, CONV_GDN_CONFIGS, CONV_GDN256_CONFIGS

FULL = __FULL__
FLAT = __FLAT__
DIV16 = ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "beta_ptr", "gamma_ptr", "C_in", "C_out",
         "sxn", "sxh", "sxw", "swo", "swh", "sww", "syn", "syh", "syw", "sg0")
# enc1 (FLAT_K: 3 input channels, 9x9/4 from a 768-wide image): C_in and the strides of x's
# pixels and of the weight (3, 27, 243 elements) are not multiples of 16
FLAT_NOT16 = ("C_in", "sxw", "swo", "swh", "sww")
def one(kernel, transposed, cfg, bn, epi, arch, dtype="bf16", flat=False):
    p = "*" + dtype
    sig = {"x_ptr": p, "w_ptr": p, "b_ptr": p, "y_ptr": p, "beta_ptr": "*fp32",
           "gamma_ptr": "*fp32"}
    for n in ("N", "C_in", "H", "W", "C_out", "H_out", "W_out", "pad", "sxn", "sxh", "sxw",
              "swo", "swh", "sww", "syn", "syh", "syw", "sg0"):
        sig[n] = "i32"
    cx = dict(cfg["kwargs"])
    cx.update(sxc=1, syc=1, sg1=1, STRIDE=2, KH=5, KW=5, HAS_BIAS=True, EPI=epi,
              PRECISION="tf32" if dtype == "fp32" else "ieee", ACC_DTYPE=tl.float32,
              EPI_PRECISION="tf32", EPI_DOT16=1 if dtype != "fp32" else 0,
              DOT_UPCAST=False, WIDE=False)   # (WIDE: images of < 2^31 elements, int32 offsets)
    # the weight as the no-grad Triton path hands it over (ops.conv.TRITON_WEIGHT_LAYOUT): input
    # channels at unit stride for both kernels ([Co, Ci, k, k] / [Ci, Co, k, k]), the other
    # strides multiples of Ci (16-divisible at SlimCAE's widths)
    cx["swi"] = 1
    if not transposed:
        cx["FLAT_K"] = flat
    if flat:
        cx.update(STRIDE=4, KH=9, KW=9)
    if bn is not None:
        cx["BLOCK_N"] = bn
    div16 = [n for n in DIV16 if n in sig and n not in cx and not (flat and n in FLAT_NOT16)]
    r = aot.compile_for_target(kernel, sig, cx, arch, num_warps=cfg["num_warps"],
                               num_stages=cfg["num_stages"], divisible_by_16=div16)
    sass = r["sass"]
    tc = aot.tensor_core_ops(sass)
    # main loop = the SASS between the first and the last backward branch target... simpler and
    # robust: tensor-core ops must sit before the first store of the output (STG) of the epilogue
    first_stg = sass.find("STG")
    tc_before = len(re.findall(r"\bH(G)?MMA\.", sass[:first_stg if first_stg >= 0 else None]))
    return {"kernel": kernel.__name__, "arch": arch, "dtype": dtype, "epi": epi, "BLOCK_N": bn,
            "flat": flat,
            **cfg["kwargs"], "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"],
            "n_regs": r["n_regs"], "n_spills": r["n_spills"], "spill_ops": r["spill_ops"],
            "local": r["local"], "shared": r["shared"], "HMMA": tc["HMMA"], "HGMMA": tc["HGMMA"],
            "tc_before_store": tc_before, "LDG128": len(re.findall(r"LDG\.E\.128", sass)),
            "LDG": len(re.findall(r"\bLDG\.", sass)), "LDGSTS128": len(re.findall(r"LDGSTS[.\w]*\.128\b", sass)),
            "wgmma": aot.wgmma_operand_depths(r["ttgir"])}

out = []
archs = (90, 80)
if FLAT:   # enc1: every plain config, and the fused-GDN ones at its 64 channels
    for arch in archs:
        for cfg in CONV_FWD_CONFIGS:
            out.append(one(K.conv2d_fwd_kernel, False, cfg, None, 0, arch, flat=True))
        for cfg in CONV_GDN_CONFIGS:
            out.append(one(K.conv2d_fwd_kernel, False, cfg, 64, 1, arch, flat=True))
    print(json.dumps(out))
    raise SystemExit(0)
plain = CONV_FWD_CONFIGS if FULL else CONV_FWD_CONFIGS[:1]
gdn = [(c, bn) for c in CONV_GDN_CONFIGS for bn in (64, 128)] if FULL else []
gdn += [(c, 256) for c in (CONV_GDN256_CONFIGS if FULL else
                           [CONV_GDN256_CONFIGS[0], CONV_GDN256_CONFIGS[-1]])]
for arch in archs:
    for kernel, tr in ((K.conv2d_fwd_kernel, False), (K.conv_transpose2d_fwd_kernel, True)):
        for cfg in plain:
            out.append(one(kernel, tr, cfg, None, 0, arch))
        for cfg, bn in gdn:
            # exactly the configs the launcher's pruning lets run on this arch
            if cfg in K.gdn_configs_for([c for c, b in gdn if b == bn], bn, arch // 10):
                out.append(one(kernel, tr, cfg, bn, 2 if tr else 1, arch))
    if FULL:  # fp32 (TF32) inputs: plain and the 128-wide fused epilogue
        out.append(one(K.conv2d_fwd_kernel, False, CONV_FWD_CONFIGS[0], None, 0, arch, "fp32"))
        out.append(one(K.conv2d_fwd_kernel, False, CONV_GDN_CONFIGS[1], 128, 1, arch, "fp32"))
print(json.dumps(out))
''')


def _run(full, flat=False):
    from slimkernels.kernels.aot import run_in_subprocess
    return run_in_subprocess(_CODE.replace("__FULL__", str(bool(full)))
                             .replace("__FLAT__", str(bool(flat))), timeout=3000)


def _check(rows):
    from slimkernels.kernels.aot import SMEM_LIMIT_PER_BLOCK
    for r in rows:
        tag = json.dumps({k: r[k] for k in ("kernel", "arch", "epi", "BLOCK_M", "BLOCK_N",
                                            "BLOCK_K", "num_warps", "num_stages") if k in r})
        assert r["n_spills"] == 0 and r["spill_ops"] == 0 and r["local"] == 0, \
            f"spills in {tag}: {r}"
        assert r["shared"] <= SMEM_LIMIT_PER_BLOCK[r["arch"]], f"shared memory over limit: {tag}"
        tc = r["HGMMA"] + r["HMMA"]
        assert tc > 0, f"no tensor-core instruction in {tag}"
        assert r["tc_before_store"] > 0, f"tensor-core ops only in the epilogue: {tag}"
        if r["arch"] == 90 and r["dtype"] != "fp32":
            assert r["HGMMA"] > 0 or r["HMMA"] > 0
        # 128-bit global loads somewhere (main loop or the epilogue's gamma tiles) ...
        assert r["LDG128"] + r["LDGSTS128"] > 0, f"no 128-bit global loads in {tag}"
        # ... and in the pipelined main loop (async copies LDGSTS.*.128) whenever the activation
        # tile gives every thread at least 16 bytes (BLOCK_M*BLOCK_K*2 B / threads >= 16)
        per_thread = r["BLOCK_M"] * r["BLOCK_K"] * (4 if r["dtype"] == "fp32" else 2) \
            // (32 * r["num_warps"])
        if per_thread >= 16:
            assert r["LDGSTS128"] > 0, f"main-loop loads narrower than 128 bit in {tag}"
        # pipelined wgmma operands buffered alike while wgmmas stay in flight (see
        # slimkernels.kernels.aot.wgmma_operand_depths and tests/kernels/test_aot_gdn.py)
        if r["arch"] == 90 and r["epi"] == 0:  # the plain main loop is pipelined on sm_90: both
            # operands multi-buffered, a wgmma in flight (with the model's contiguous weights,
            # not input-channel contiguous, the weight tile came by scalar loads, synchronously)
            dots = r["wgmma"]["dots"]
            assert dots and min(dots[0]) >= 2 and r["wgmma"]["max_pendings"] >= 1, \
                f"main loop not pipelined: {r['wgmma']} in {tag}"
        if r["wgmma"]["max_pendings"] >= 1:
            for depths in r["wgmma"]["dots"]:
                assert len({d for d in depths if d >= 2}) <= 1, \
                    f"wgmma operands buffered {depths} deep with wgmmas in flight: {tag}"


def test_aot_conv_fast_subset():
    rows = _run(False)
    # per arch and kernel: one plain config + the 256-wide GDN configs the arch keeps
    assert len(rows) == 2 * (1 + 2) + 2 * (1 + 1)
    _check(rows)


@pytest.mark.slow
def test_aot_conv_all_configs():
    rows = _run(True)
    _check(rows)


_COL2IM_CODE = textwrap.dedent(r'''
import json
import triton.language as tl
from slimkernels.kernels import aot
from slimkernels.kernels import conv as K
from slimkernels.kernels.configs import COL2IM_CONFIGS

out = []
for arch in (90, 80):
    for cfg in COL2IM_CONFIGS:
        for ydt in ("bf16", "fp32"):
            sig = {"z_ptr": "*fp32", "b_ptr": "*" + ydt, "y_ptr": "*" + ydt}
            for n in ("N", "H", "W", "C_out", "H_out", "W_out", "pad_h", "pad_w", "szn", "szh",
                      "szw", "syn", "syc", "syh", "syw"):
                sig[n] = "i32"
            cx = dict(cfg["kwargs"], szc=1, STRIDE=4, KH=9, KW=9, HAS_BIAS=True, BLOCK_N=4,
                      ACC_DTYPE=tl.float32, WIDE=False)
            r = aot.compile_for_target(K.col2im_kernel, sig, cx, arch,
                                       num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
            out.append({"arch": arch, "y": ydt, **cfg["kwargs"], "num_warps": cfg["num_warps"],
                        "n_regs": r["n_regs"], "n_spills": r["n_spills"],
                        "spill_ops": r["spill_ops"], "local": r["local"]})
print(json.dumps(out))
''')


def test_aot_col2im_no_spills():
    """The gather half of the col2im transposed conv (the output layer: 3 channels, 9x9 / 4),
    every config, sm_90 and sm_80, bf16 and fp32 output: no register spills."""
    from slimkernels.kernels.aot import MAX_REGS_PER_THREAD, run_in_subprocess
    from slimkernels.kernels.configs import COL2IM_CONFIGS
    rows = run_in_subprocess(_COL2IM_CODE, timeout=1200)
    assert len(rows) == 2 * 2 * len(COL2IM_CONFIGS)
    for r in rows:
        assert r["n_spills"] == 0 and r["spill_ops"] == 0 and r["local"] == 0, f"spills: {r}"
        assert 0 < r["n_regs"] <= MAX_REGS_PER_THREAD, r


_WIDE_CODE = textwrap.dedent(r'''
import json, traceback
import torch
import triton.language as tl
from slimkernels.kernels import aot
from slimkernels.kernels import conv as K
from slimkernels.kernels import gdn as G
from slimkernels.kernels.configs import CONV_FWD_CONFIGS, COL2IM_CONFIGS

out = {}
def attempt(name, kernel, sig, cx, cfg):
    try:
        aot.compile_for_target(kernel, sig, cx, 90, num_warps=cfg["num_warps"],
                               num_stages=cfg["num_stages"])
        out[name] = "ok"
    except Exception as e:
        while e.__cause__ is not None:
            e = e.__cause__
        out[name] = "".join(traceback.format_exception_only(type(e), e))[-400:]

cfg = CONV_FWD_CONFIGS[0]
for kernel, tr in ((K.conv2d_fwd_kernel, False), (K.conv_transpose2d_fwd_kernel, True)):
    for epi in (0, 1):
        sig = {n: "*bf16" for n in ("x_ptr", "w_ptr", "b_ptr", "y_ptr")}
        sig.update(beta_ptr="*fp32", gamma_ptr="*fp32")
        for n in ("N", "C_in", "H", "W", "C_out", "H_out", "W_out", "pad", "sxn", "sxc", "sxh",
                  "sxw", "swo", "swi", "swh", "sww", "syn", "syc", "syh", "syw", "sg0", "sg1"):
            sig[n] = "i32"
        cx = dict(cfg["kwargs"], STRIDE=2, KH=5, KW=5, HAS_BIAS=True, EPI=epi, PRECISION="ieee",
                  ACC_DTYPE=tl.float32, EPI_PRECISION="tf32", EPI_DOT16=1, DOT_UPCAST=False,
                  WIDE=True)
        if epi:
            cx["BLOCK_N"] = 64
        if not tr:
            cx["FLAT_K"] = False
        attempt(f"{kernel.__name__} EPI={epi}", kernel, sig, cx, cfg)
cfg = COL2IM_CONFIGS[0]
sig = {"z_ptr": "*fp32", "b_ptr": "*bf16", "y_ptr": "*bf16"}
for n in ("N", "H", "W", "C_out", "H_out", "W_out", "pad_h", "pad_w", "szn", "szc", "szh", "szw",
          "syn", "syc", "syh", "syw"):
    sig[n] = "i32"
attempt("col2im_kernel", K.col2im_kernel, sig,
        dict(cfg["kwargs"], STRIDE=4, KH=9, KW=9, HAS_BIAS=True, BLOCK_N=4,
             ACC_DTYPE=tl.float32, WIDE=True), cfg)
for sp in G.aot_specs(torch.bfloat16, layout="channels_last", all_configs=False):
    attempt(sp["name"], sp["kernel"], sp["signature"], dict(sp["constexprs"], WIDE=True),
            {"num_warps": sp["num_warps"], "num_stages": sp["num_stages"]})
print(json.dumps(out))
''')


def test_aot_wide_variants_compile():
    """The conv, col2im and GDN kernels specialised with ``WIDE=True`` (what the launchers pass
    for a tensor of >= 2^31 elements) compile for sm_90: their int64 helpers returned once
    inside ``if WIDE:`` and once after it, and Triton's code generator refused the two return
    types ("Return type mismatch: int64 and int32", triton 3.6 and 3.9): a GPU run on such an
    image failed to compile (the interpreter, which runs the Python as written, did not see
    it)."""
    from slimkernels.kernels.aot import run_in_subprocess
    res = run_in_subprocess(_WIDE_CODE, timeout=1200)
    bad = {k: v for k, v in res.items() if v != "ok"}
    assert len(res) == 9 and not bad, bad


def test_aot_conv_flat_k_enc1():
    """enc1's kernel variant (FLAT_K: taps and channels flattened into K, 3 channels, 9x9/4),
    which the subsets above never compile: with the fused GDN every config is clean; of the
    plain configs (no GDN: enc1 of a model whose first GDN does not fuse, or at widths past the
    fused epilogue's) at least one is spill-free on each arch, with tensor-core ops, so that
    the autotuner has one to pick. Measured with triton 3.9: 3 of the 6 spill on sm_90 (152 to
    1936 B) and on sm_80 (24 to 1236 B); with triton 3.6 the 128/16/64 one has no tensor-core
    op on sm_90 either; to prune once a GPU measures them."""
    from slimkernels.kernels.configs import CONV_FWD_CONFIGS, CONV_GDN_CONFIGS
    from slimkernels.kernels.aot import SMEM_LIMIT_PER_BLOCK
    rows = _run(False, flat=True)
    assert len(rows) == 2 * (len(CONV_FWD_CONFIGS) + len(CONV_GDN_CONFIGS))

    def good(r):   # (no 128-bit loads to ask for: a pixel's 3 channels are 6 bytes)
        return r["n_spills"] == r["spill_ops"] == r["local"] == 0 and r["tc_before_store"] > 0 \
            and r["shared"] <= SMEM_LIMIT_PER_BLOCK[r["arch"]]
    for r in rows:
        assert r["epi"] == 0 or good(r), f"a fused-GDN config spills or lacks tensor cores: {r}"
    for arch in (90, 80):
        plain = [r for r in rows if r["arch"] == arch and r["epi"] == 0]
        assert any(good(r) for r in plain), f"no clean plain FLAT_K config on sm_{arch}: {plain}"
