"""GPU readiness of the GDN kernels without a GPU: compile ahead of time for sm_90 and sm_80.

Every autotune config of every GDN kernel (slimkernels/kernels/configs.py) must compile with
no register spills (no local-memory instruction in the SASS of the cubin triton built), shared memory within the chip's per-block limit, and tensor-core
instructions (HMMA on sm_80; HGMMA or HMMA on sm_90) in the SASS: the only tl.dot calls are the
channel-mixing GEMM loops, so tensor-core instructions there mean the mixing uses tensor cores.

The compiles run in a subprocess with TRITON_INTERPRET=0 (under the interpreter the kernels are
not compilable). The default run checks a representative subset (first config of each kernel,
fp32 on both archs, bf16 forward); ``-m slow`` runs every config x dtype x layout x arch.
"""
import json
import os
import textwrap

import pytest

pytest.importorskip("triton")

from slimkernels.kernels.aot import (MAX_REGS_PER_THREAD, SMEM_LIMIT_PER_BLOCK,  # noqa: E402
                                     run_in_subprocess)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CODE = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    import torch
    from slimkernels.kernels.gdn import aot_specs
    from slimkernels.kernels.aot import compile_for_target, tensor_core_ops, wgmma_operand_depths
    jobs = json.loads({jobs!r})
    out = []
    for dtype, layout, all_configs, only, archs in jobs:
        for sp in aot_specs(getattr(torch, dtype), all_configs=all_configs, layout=layout):
            if only and not sp["name"].startswith(tuple(only)):
                continue
            for arch in archs:
                r = compile_for_target(sp["kernel"], sp["signature"], sp["constexprs"], arch,
                                       num_warps=sp["num_warps"], num_stages=sp["num_stages"],
                                       divisible_by_16=sp["divisible_by_16"])
                out.append(dict(name=sp["name"], dtype=dtype, layout=layout, arch=arch,
                                config=sp["config"], n_regs=r["n_regs"],
                                n_spills=r["n_spills"], spill_ops=r["spill_ops"],
                                local=r["local"], shared=r["shared"],
                                tc=tensor_core_ops(r["sass"]),
                                wgmma=wgmma_operand_depths(r["ttgir"])))
    print(json.dumps(out))
""")


def _compile(jobs):
    return run_in_subprocess(_CODE.format(root=ROOT, jobs=json.dumps(jobs)), timeout=3000)


def _check(results):
    assert results, "nothing was compiled"
    bad = []
    for r in results:
        what = f"{r['name']} {r['dtype']} {r['layout']} sm_{r['arch']} {r['config']}"
        if r["n_spills"] != 0 or r["spill_ops"] != 0:
            bad.append(f"{what}: {r['n_spills']} bytes spilled by a ptxas re-run, "
                       f"{r['spill_ops']} local-memory instructions in triton's cubin "
                       f"({r['n_regs']} registers)")
        if r["shared"] > SMEM_LIMIT_PER_BLOCK[r["arch"]]:
            bad.append(f"{what}: {r['shared']} B shared > {SMEM_LIMIT_PER_BLOCK[r['arch']]}")
        tc = r["tc"]["HMMA"] + (r["tc"]["HGMMA"] if r["arch"] >= 90 else 0)
        if tc == 0:
            bad.append(f"{what}: no tensor-core instruction in the SASS ({r['tc']})")
        if r["n_regs"] > MAX_REGS_PER_THREAD or r["n_regs"] <= 0:
            bad.append(f"{what}: {r['n_regs']} registers")
        # wgmmas left in flight (pendings >= 1) need every pipelined operand buffered alike: the
        # GDN backward's dn tile once got 2 buffers against gamma's 3 (it also fed a reduction),
        # and the next async copy overwrote it under the pending wgmma (wrong dx on an H200)
        wg = r["wgmma"]
        for depths in wg["dots"]:
            multi = {d for d in depths if d >= 2}
            if wg["max_pendings"] >= 1 and len(multi) > 1:
                bad.append(f"{what}: wgmma operands buffered {depths} deep with wgmmas in flight "
                           f"(pendings {wg['max_pendings']}): a copy can overwrite a tile the "
                           f"pending wgmma reads")
    assert not bad, "\n".join(bad)


def test_aot_representative_subset():
    results = _compile([
        ["float32", "nchw", False, None, [90, 80]],
        ["bfloat16", "channels_last", False, ["gdn_fwd"], [90, 80]],
    ])
    assert {r["arch"] for r in results} == {90, 80}
    assert len({r["name"] for r in results}) == 4  # fwd, bwd_dn, bwd_dx, bwd_dgamma
    _check(results)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_aot_every_config(dtype, layout):
    from slimkernels.kernels.configs import (GDN_BWD_DGAMMA_CONFIGS, GDN_BWD_DX_CONFIGS,
                                             GDN_FWD_CONFIGS)
    results = _compile([[dtype, layout, True, None, [90, 80]]])
    n = 2 * len(GDN_FWD_CONFIGS) + len(GDN_BWD_DX_CONFIGS) + len(GDN_BWD_DGAMMA_CONFIGS)
    assert len(results) == 2 * n
    _check(results)


def test_wgmma_operand_depths_reads_buffers_and_pendings():
    """The TTGIR reader on a hand-written excerpt (the shape of the old GDN dx kernel's loop:
    dn double-buffered, gamma triple-buffered, one wgmma left in flight)."""
    from slimkernels.kernels.aot import wgmma_operand_depths
    ir = """
    %dn_44 = ttg.local_alloc : () -> !ttg.memdesc<2x64x32xf32, #shared, #smem, mutable> loc(#l)
    %g_45 = ttg.local_alloc : () -> !ttg.memdesc<3x32x64xf32, #shared1, #smem, mutable> loc(#l)
    %z = ttg.local_alloc %v : (tensor<64x32xbf16, #b>) -> !ttg.memdesc<64x32xbf16, #shared, #smem> loc(#l)
    %dn_156 = ttg.memdesc_index %dn_44[%i] : !ttg.memdesc<2x64x32xf32, #shared> -> !ttg.memdesc<64x32xf32>
    %g_160 = ttg.memdesc_index %g_45[%j] : !ttg.memdesc<3x32x64xf32, #shared1> -> !ttg.memdesc<32x64xf32>
    %acc_161 = ttng.warp_group_dot %dn_156, %g_160, %arg17 {inputPrecision = 0 : i32, isAsync = true}
    %acc_162:3 = ttng.warp_group_dot_wait %acc_161, %dn_156, %g_160 {pendings = 1 : i32}
    %acc_170 = ttng.warp_group_dot %z, %g_160, %acc_162 {isAsync = true}
    %acc_171 = ttng.warp_group_dot_wait %acc_170 {pendings = 0 : i32}
    """
    r = wgmma_operand_depths(ir)
    assert r == {"dots": [(2, 3), (1, 3)], "max_pendings": 1}
    assert wgmma_operand_depths("") == {"dots": [], "max_pendings": 0}


def test_local_memory_ops_counts_spill_stores_and_loads():
    """The spill count of the binary itself, from its SASS (ptxas -v re-run without triton's
    options reported 0 bytes for a cubin holding the two instructions below)."""
    from slimkernels.kernels.aot import local_memory_ops
    sass = """
        /*0a30*/                   STL [R1], R97 ;
        /*0b40*/                   LDL.LU R251, [R1] ;
        /*0b50*/                   STL.64 [R1+0x8], R4 ;
        /*0c00*/                   STG.E desc[UR6][R2.64], R5 ;
        /*0c10*/                   LDGSTS.E.BYPASS.128 [R7], desc[UR8][R2.64] ;
        /*0c20*/                   LDS.U16 R9, [R3] ;
        /*0c30*/                   ULDC.64 UR4, c[0x0][0x118] ;
    """
    assert local_memory_ops(sass) == 3
    assert local_memory_ops("") == 0


def test_a_config_that_spills_in_triton_s_own_cubin_is_caught():
    """The dx config (8 warps, BLOCK_P=128, BLOCK_CO=64, BLOCK_CI=32) used 255 registers and
    spilled 4 bytes in fp32 on sm_90 with triton 3.9: STL / LDL in the SASS of triton's cubin,
    while the ptxas re-run (n_spills) and cuobjdump's LOCAL said 0. compile_for_target reports
    the binary's own spills (spill_ops, cubin_stack); the config shipped now has none."""
    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, {root!r})
        import torch
        from slimkernels.kernels import configs
        from slimkernels.kernels.gdn import aot_specs
        from slimkernels.kernels.aot import compile_for_target
        out = {{}}
        for tag, cfg in (("shipped", configs.GDN_BWD_DX_CONFIGS[1]),
                         ("co64", configs._cfg(8, 3, BLOCK_P=128, BLOCK_CO=64, BLOCK_CI=32))):
            configs.GDN_BWD_DX_CONFIGS[1] = cfg
            sp = [s for s in aot_specs(torch.float32, all_configs=True, layout="nchw")
                  if s["name"] == "gdn_bwd_dx[1]"][0]
            r = compile_for_target(sp["kernel"], sp["signature"], sp["constexprs"], 90,
                                   num_warps=sp["num_warps"], num_stages=sp["num_stages"],
                                   divisible_by_16=sp["divisible_by_16"])
            out[tag] = dict(spill_ops=r["spill_ops"], cubin_stack=r["cubin_stack"],
                            n_regs=r["n_regs"])
        print(json.dumps(out))
    """).format(root=ROOT)
    r = run_in_subprocess(code, timeout=1200)
    assert r["shipped"]["spill_ops"] == 0 and r["shipped"]["cubin_stack"] == 0, r
    import triton
    if tuple(int(v) for v in triton.__version__.split(".")[:2]) != (3, 9) and \
            r["co64"]["spill_ops"] == 0 and r["co64"]["cubin_stack"] == 0:
        # (the premise is triton 3.9's register allocation: triton 3.6, as on the GPU
        # machine, fits this config without spilling, and there is nothing to catch)
        pytest.skip(f"triton {triton.__version__} compiles the co64 config without spills "
                    f"(it spilled with triton 3.9): {r}")
    assert r["co64"]["spill_ops"] > 0 and r["co64"]["cubin_stack"] > 0, r
