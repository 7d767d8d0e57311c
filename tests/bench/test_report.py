"""bench/report.py --quick end to end into tmp_path, and the pieces it is built from."""
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import e2e  # noqa: E402
import report  # noqa: E402
from plain_slimcae import PlainSlimCAE  # noqa: E402


def test_report_precisions_fp32_only(tmp_path):
    """--precisions fp32 (CPUs without native bf16): no bf16 row anywhere, fp32 goals present,
    the README says bf16 was not measured; a precision it does not know is refused."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.join(BENCH, "report.py"), "--quick", "--threads", "1",
           "--no-compressai", "--out", str(tmp_path)]
    r = subprocess.run(cmd + ["--precisions", "fp32"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "e2e.json").read_text())
    assert {row["precision"] for row in res["rows"]} == {"fp32"}
    layers = json.loads((tmp_path / "layers.json").read_text())
    rows = layers["rows"] if isinstance(layers, dict) else layers
    assert rows and {row["precision"] for row in rows} == {"fp32"}
    goals = json.loads((tmp_path / "goals.json").read_text())["goals"]
    assert "vs_plain_fp32" in goals and not any(k.endswith("_bf16") for k in goals)
    md = (tmp_path / "README.md").read_text()
    if res["meta"]["default_precision"] == "fp32":
        assert '`precision="bf16"` was not measured in this run' in md
    bad = subprocess.run(cmd + ["--precisions", "fp16"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 2 and "--precisions takes fp32 and/or bf16" in bad.stderr


def test_quick_folder_is_new_under_the_temporary_folder(tmp_path, monkeypatch):
    """The --quick default folder: under tempfile.gettempdir(), not existing yet (a folder of
    the same name gets a suffix), and not created by the naming."""
    import tempfile
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    first = report.quick_folder("cpu-x")
    assert os.path.dirname(first) == str(tmp_path) and not os.path.exists(first)
    assert os.path.basename(first).startswith("slimkernels-report-quick-cpu-x-")
    os.makedirs(first)
    second = report.quick_folder("cpu-x")
    assert second != first and second.startswith(first) and not os.path.exists(second)


def test_report_quick(tmp_path):
    """--quick without --out writes into a new folder under the temporary folder ($TMPDIR), never
    into bench/results/ beside the tracked reports (it wrote there when the machine had none)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, os.path.join(BENCH, "report.py"), "--quick", "--threads",
                        "1", "--cuda-dry-run"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    made = list(tmp_path.glob("slimkernels-report-quick-*"))
    assert len(made) == 1 and made[0].is_dir() and f"wrote {made[0]}" in r.stdout, r.stdout[-2000:]
    tmp_path = made[0]
    for name in ("e2e.json", "memory.json", "layers.json", "goals.json", "cuda_dry_run.json",
                 "README.md", "e2e_time.png", "e2e_memory.png", "layers_time.png",
                 "layers_memory.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    res = json.loads((tmp_path / "e2e.json").read_text())
    ws = res["meta"]["widths"]
    got = {(r["impl"], r["precision"], r["width"], r["op"]) for r in res["rows"]}
    for w in ws:
        for impl, p in (("ours", "fp32"), ("ours", "bf16"), ("plain", "fp32"), ("plain", "bf16")):
            for op in ("compress", "decompress"):
                assert (impl, p, w, op) in got
    for row in res["rows"]:
        assert row["ms"] > 0 and row["bytes"] > 0
        assert row["ms"] == row["ms"]  # not NaN
    assert all(res["checks"].values()), res["checks"]
    # ours fp32 and plain fp32 decode the same image (same weights, same coder)
    for row in res["rows"]:
        if row["precision"] == "fp32":
            assert row["max_abs_diff_vs_plain"] < 1e-3
    mem = json.loads((tmp_path / "memory.json").read_text())["rows"]
    # peak above the pre-call RSS; the kernel's RSS counters are per-thread approximations (up to
    # 64 pages a thread behind), so a call that allocates nothing can read a hair below zero
    assert mem and all(m["peak_mib"] > -1.0 for m in mem), mem
    # what the warm-up left resident (ours' weight caches): reported beside the peaks
    assert all(m["retained_mib"] >= 0 for m in mem), mem
    # per layer: every layer at every width, ours in the default precision and plain fp32
    lrows = json.loads((tmp_path / "memory.json").read_text())["layer_rows"]
    dp_ = res["meta"]["default_precision"]
    assert sorted((m["layer"], m["width"], m["impl"], m["precision"]) for m in lrows) == sorted(
        (name, w, impl, p) for name in e2e.LAYERS for w in ws
        for impl, p in (("ours", dp_), ("plain", "fp32")))
    assert all(m["peak_mib"] > -1.0 and m["op"] == "layer" for m in lrows), lrows
    assert all(m["first_call_ms"] > 0 for m in mem), mem
    goals = json.loads((tmp_path / "goals.json").read_text())["goals"]
    assert "vs_plain_fp32" in goals and "entropy_share_compress_fp32" in goals
    assert all(isinstance(g["met"], bool) for g in goals.values())
    md = (tmp_path / "README.md").read_text()
    assert "## End to end" in md and "## Goals" in md and "Owed" in md
    assert "keeps resident between calls" in md and "first call ms" in md
    from slimkernels.codec import resolve_precision
    dp = resolve_precision("auto", "cpu")
    assert res["meta"]["default_precision"] == dp
    assert f"default precision (`auto` = {dp} here) vs plain PyTorch fp32" in md
    assert f"vs_plain_{dp}" in goals
    rat = {(r["precision"], r["width"], r["op"]): r for r in res["ratios"]}
    for w in ws:
        for op in ("compress", "decompress"):
            r16 = rat[("bf16", w, op)]
            assert r16["speedup_vs_plain_same_precision"] > 0 and "dbpp_vs_plain" in r16
            assert ("fp32", w, op) in rat
    assert "vs_plain_same_precision_bf16" in goals
    cuda = json.loads((tmp_path / "cuda_dry_run.json").read_text())
    assert cuda["dry_run"] and cuda["rows"]
    assert {"enc_ours_ms", "enc_graph_ms", "enc_eager_ms", "compress_ms"} <= set(cuda["rows"][0])
    # (plain PyTorch under a CUDA graph as well: graph against graph, beside graph against eager)
    assert {"enc_eager_graph_ms", "dec_eager_graph_ms", "enc_graph_vs_eager_graph",
            "dec_graph_vs_eager_graph"} <= set(cuda["rows"][0])
    png = (tmp_path / "e2e_time.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_layer_memory_counts_the_layers_output():
    """The memory children's per-layer peak on the full image: enc1 at w=192 writes an output of
    known size (ours fp32 channels_last, plain fp32 NCHW: 192 x 128 x 192 floats, 18 MiB), which
    the peak holds; and the activations the calls are given are not counted."""
    cfgs = [c for c in e2e.layer_memory_configs([192], precisions=("fp32",))
            if c["layer"] in ("enc.conv1", "dec.tconv3")]
    rows = e2e.peak_memory(cfgs, {"image": None, "quick": False, "model": None, "threads": 1},
                           log=lambda *a: None)
    got = {(r["layer"], r["impl"]): r["peak_mib"] for r in rows}
    out = 192 * 128 * 192 * 4 / 2 ** 20
    for impl in ("ours", "plain"):
        assert 0.9 * out <= got[("enc.conv1", impl)] <= 4 * out, got
    # dec3's output is the 768 x 512 RGB image (4.5 MiB), far less than its 18 MiB input
    img = 3 * 512 * 768 * 4 / 2 ** 20
    assert 0.9 * img <= got[("dec.tconv3", "ours")] <= 2 * img, got


def test_machine_name():
    name = report.machine_name("cpu")
    assert name.startswith("cpu-") and name.endswith(f"-{os.cpu_count()}c")
    assert all(c.isalnum() or c == "-" for c in name)
    assert report._slug("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz") == "intel-xeon-platinum-8480"
    assert report._slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.parametrize("width", [192, 72])
def test_plain_matches_ours(width):
    """The plain-PyTorch baseline computes the same transforms as SlimCAE, against float64."""
    model, _ = e2e.load_model(None, seed=1)
    plain = PlainSlimCAE.from_model(model).eval()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = plain.encode(x, width)
        ref_y = PlainSlimCAE.from_model(model).double().encode(x.double(), width)
        assert torch.allclose(y.double(), ref_y, rtol=1e-5, atol=1e-5 * ref_y.abs().max().item())
        assert torch.allclose(model.encode(x, width).double(), ref_y, rtol=1e-5,
                              atol=1e-5 * ref_y.abs().max().item())
        y_hat = torch.round(y)
        ref_x = PlainSlimCAE.from_model(model).double().decode(y_hat.double())
        tol = 1e-5 * ref_x.abs().max().item()
        assert torch.allclose(plain.decode(y_hat).double(), ref_x, rtol=1e-5, atol=tol)
        assert torch.allclose(model.decode(y_hat).double(), ref_x, rtol=1e-5, atol=tol)


def test_plain_load_rejects_other_state_dict():
    plain = PlainSlimCAE((192, 48))
    with pytest.raises(ValueError, match="missing keys"):
        plain.load_state_dict({"g_a.0.weight": torch.zeros(192, 3, 9, 9)})


def test_goals_logic():
    ws = [192, 48]
    res = {"rows": [], "compressai": {"compress_ms": 600.0, "decompress_ms": 600.0}}
    rat = []
    for w, ms in ((192, 100.0), (48, 10.0)):
        for op in ("compress", "decompress"):
            res["rows"].append({"impl": "ours", "precision": "fp32", "width": w, "op": op,
                                "ms": ms})
            rat.append({"impl": "ours", "precision": "fp32", "width": w, "op": op, "speedup_vs_plain": 2.0,
                        "speedup_vs_compressai": 600.0 / ms, "entropy_share": 0.05,
                        "dpsnr_vs_plain_db": 0.0})
    mem = [{"impl": "ours", "precision": "fp32", "width": w, "op": "compress", "peak_mib": m}
           for w, m in ((192, 50.0), (48, 60.0))]
    g = report.goals(res, rat, mem, ws)
    assert g["vs_plain_fp32"]["met"]
    assert g["vs_compressai_w192_fp32"]["met"] and g["vs_compressai_w48_fp32"]["met"]
    assert g["decreasing_compress_fp32"]["met"] and g["w48_over_w192_compress_fp32"]["met"]
    assert g["entropy_share_compress_fp32"]["met"]
    assert not g["memory_falling_compress_fp32"]["met"]  # 50 -> 60 MiB rises
    rat[0]["dpsnr_vs_plain_db"] = -0.06
    assert not report.goals(res, rat, mem, ws)["vs_plain_fp32"]["met"]
    # with the equal-rate loss known, it decides: a PSNR gain bought with bits is no loss ...
    for r in rat:
        r["dpsnr_vs_plain_db"], r["rd_loss_vs_plain_db"] = 0.08, -0.02
    g = report.goals(res, rat, mem, ws)["vs_plain_fp32"]
    assert g["met"] and g["detail"]["max_rd_loss_db"] == -0.02
    rat[2]["rd_loss_vs_plain_db"] = 0.051                       # ... a loss above 0.05 dB is
    assert not report.goals(res, rat, mem, ws)["vs_plain_fp32"]["met"]
    rat[2]["rd_loss_vs_plain_db"] = 0.0
    rat[1]["speedup_vs_plain"] = 1.49                           # and so is one slow width
    assert not report.goals(res, rat, mem, ws)["vs_plain_fp32"]["met"]


def test_psnr_at_rate():
    curve = [(0.1, 20.0), (0.4, 24.0), (1.6, 30.0)]             # log-rate steps of log(4)
    assert e2e.psnr_at_rate(curve, 0.4) == pytest.approx(24.0)
    assert e2e.psnr_at_rate(curve, 0.2) == pytest.approx(22.0)  # halfway in log-rate
    assert e2e.psnr_at_rate(curve, 0.8) == pytest.approx(27.0)
    assert e2e.psnr_at_rate(curve, 3.2) == pytest.approx(33.0)  # extended past the end
    assert e2e.psnr_at_rate(curve, 0.05) == pytest.approx(18.0)
    assert e2e.psnr_at_rate([(0.5, 25.0)], 0.7) == 25.0


def test_compressai_loads_without_package_import():
    cls = e2e.load_compressai_factorized()
    if cls is None:
        pytest.skip("compressai is not installed")
    torch.manual_seed(0)
    m = cls(8, 12).eval()
    m.update(force=True)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        out = m.compress(x)
        ref = m.g_s(torch.round(m.g_a(x) - m.entropy_bottleneck._get_medians())
                    + m.entropy_bottleneck._get_medians()).clamp(0, 1)
        x_hat = m.decompress(out["strings"], out["shape"])["x_hat"]
    assert torch.allclose(x_hat, ref, atol=1e-5)


def test_interleaved_burst_times_the_last_call_of_each_configuration():
    calls = []

    def make(name):
        def f():
            calls.append(name)
            return {"part": float(len(calls))}
        return f
    t = e2e.interleaved({"a": make("a"), "b": make("b")}, repeats=2, warmup=1, burst=3)
    bursts = [calls[i:i + 3] for i in range(0, len(calls), 3)]
    assert len(calls) == 18 and all(len(set(b)) == 1 for b in bursts)
    rounds = [{bursts[i][0], bursts[i + 1][0]} for i in range(0, 6, 2)]
    assert rounds == [{"a", "b"}] * 3           # every round runs each fn once (in some order)
    # recorded: the 3rd call of each burst in the 2 timed rounds (rounds 2 and 3)
    last = {n: [3 * (i + 1) for i in range(2, 6) if bursts[i][0] == n] for n in "ab"}
    assert t["a"]["n"] == t["b"]["n"] == 2
    assert t["a"]["part"] == sum(last["a"]) / 2 and t["b"]["part"] == sum(last["b"]) / 2
    t1 = e2e.interleaved({"a": make("a")}, repeats=3, warmup=0)
    assert t1["a"]["n"] == 3 and calls[-3:] == ["a"] * 3


def test_interleaved_order_changes_between_rounds():
    """A new call order every round: no fn always runs right after the same neighbour."""
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    e2e.interleaved(fns, repeats=12, warmup=0)
    orders = {tuple(calls[i:i + 4]) for i in range(0, len(calls), 4)}
    assert all(sorted(o) == list("abcd") for o in orders) and len(orders) > 1


def test_cuda_section_without_gpu_links_measured_reports(tmp_path, monkeypatch):
    """A CPU report says the CUDA table is owed until a GPU run left one in results/cuda-*/,
    then links every such report (relative to the report's folder)."""
    monkeypatch.setattr(report, "HERE", str(tmp_path))
    out = tmp_path / "results" / "cpu-x"
    out.mkdir(parents=True)
    assert report.cuda_elsewhere(str(out)).startswith("**Owed**")
    gpu = tmp_path / "results" / "cuda-some-gpu"
    gpu.mkdir()
    (gpu / "cuda.json").write_text("{}")
    text = report.cuda_elsewhere(str(out))
    assert not text.startswith("**Owed**")
    assert "[cuda-some-gpu](../cuda-some-gpu/README.md)" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU paths")
def test_cuda_only_needs_a_gpu_or_the_dry_run(tmp_path, capsys):
    assert report.main(["--cuda-only", "--quick", "--no-tune-malloc", "--out", str(tmp_path)]) == 2
    assert "--cuda-only needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "cuda.json").exists()


def test_cuda_only_dry_run_keeps_width_order_and_writes_after_each_row(tmp_path, monkeypatch):
    """--cuda-only: widths in the order given (the lease may end before the last), the table
    rewritten after every row, torch.compile only at --compile-widths (a dry run compiles
    nothing, so the argument is checked for parsing and passing through)."""
    import e2e_cuda
    written, passed = [], {}
    real_write, real_section = report.write_cuda, e2e_cuda.cuda_section

    def spy_write(cdir, meta, cres):
        written.append(len(cres["rows"]))
        return real_write(cdir, meta, cres)

    def spy_section(*a, **kw):
        passed["compile_widths"] = kw.get("compile_widths")
        return real_section(*a, **kw)

    monkeypatch.setattr(report, "write_cuda", spy_write)
    monkeypatch.setattr(e2e_cuda, "cuda_section", spy_section)
    assert report.main(["--cuda-only", "--cuda-dry-run", "--quick", "--no-tune-malloc",
                        "--widths", "48,192",
                        "--compile-widths", "192", "--out", str(tmp_path)]) == 0
    cuda = json.loads((tmp_path / "cuda.json").read_text())
    assert [r["width"] for r in cuda["rows"]] == [48, 48, 192, 192]
    assert [r["dtype"] for r in cuda["rows"]] == ["float32", "bfloat16"] * 2
    assert written == [1, 2, 3, 4, 4]  # after each row, then the final write
    assert passed["compile_widths"] == [192]
    assert "| 48 | float32 |" in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "e2e.json").exists()  # no CPU section


@pytest.mark.parametrize("flags,tag", [({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "amx"),
                                       ({"avx2", "avx512f", "avx512_bf16"}, "avx512bf16"),
                                       ({"avx2", "avx512f"}, "avx512"), ({"avx2"}, "avx2"),
                                       (set(), "")])
def test_cpu_isa_tag(flags, tag):
    assert report.cpu_isa_tag(flags) == tag


def test_cpu_machine_name_carries_the_isa_tier(monkeypatch):
    """Two VMs reporting the same bare model name but different code paths get two folders."""
    monkeypatch.setattr(report, "cpu_model_name", lambda: "AMD EPYC")
    monkeypatch.setattr(report.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(report, "cpu_isa_tag", lambda flags=None: "avx2")
    assert report.machine_name("cpu") == "cpu-amd-epyc-avx2-2c"
    monkeypatch.setattr(report, "cpu_isa_tag", lambda flags=None: "avx512bf16")
    assert report.machine_name("cpu") == "cpu-amd-epyc-avx512bf16-2c"
    monkeypatch.setattr(report, "cpu_isa_tag", lambda flags=None: "")
    assert report.machine_name("cpu") == "cpu-amd-epyc-2c"


def test_width_lists_that_are_not_integers_are_refused(tmp_path, capsys):
    for bad in (["--widths", "192,4x"], ["--compile-widths", "a"]):
        assert report.main(["--quick", "--no-tune-malloc", "--out", str(tmp_path)] + bad) == 2
        assert "comma-separated integers" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cuda_goals_are_not_met_by_a_run_missing_widths():
    """A w=192-only GPU run was marked 'transforms >= 3x eager at every width: met'."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
    from e2e_cuda import cuda_goals

    def row(w, sp):
        return {"width": w, "dtype": "float32", "enc_speedup_vs_eager": sp,
                "dec_speedup_vs_eager": sp, "enc_ours_ms": w / 100, "dec_ours_ms": w / 100,
                "compress_ms": 4.0, "decompress_ms": 4.0}
    g = cuda_goals([row(192, 3.4)])
    assert g["transforms_vs_eager_float32"]["met"] is False
    assert g["transforms_vs_eager_float32"]["missing"] == [144, 96, 72, 48]
    assert g["w48_over_w192_float32"]["met"] is False and g["w48_over_w192_float32"]["value"] is None
    g = cuda_goals([row(w, 3.4) for w in (192, 144, 96, 72, 48)])
    assert g["transforms_vs_eager_float32"]["met"] is True
    assert g["w48_over_w192_float32"]["value"] == pytest.approx(0.25)


def test_cuda_only_prints_the_goals_of_a_run_without_w48(tmp_path, monkeypatch, capsys):
    """gpu_session.sh documents GPU_REPORT_WIDTHS=192,96 for later calls: the console summary
    of such a run formatted the w=48 / w=192 goal's value None with :.3f and exited 1 (after
    writing its results)."""
    import e2e_cuda

    def section(model, x, widths, **kw):   # a GPU run's rows, without a GPU
        rows = [{"width": w, "dtype": dt, "enc_ours_ms": 1.0, "dec_ours_ms": 1.0,
                 "enc_eager_ms": 4.0, "dec_eager_ms": 4.0, "compress_ms": 5.0,
                 "decompress_ms": 5.0, "enc_speedup_vs_eager": 4.0, "dec_speedup_vs_eager": 4.0,
                 "notes": []} for w in widths for dt in ("float32", "bfloat16")]
        return {"device": "test", "dry_run": False, "image": [32, 48], "rows": rows,
                "goals": e2e_cuda.cuda_goals(rows)}

    monkeypatch.setattr(e2e_cuda, "cuda_section", section)
    assert report.main(["--cuda-only", "--cuda-dry-run", "--quick", "--no-tune-malloc",
                        "--widths", "192,96", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cuda goal w48_over_w192_float32: NOT met (- (missing: [48]))" in out
    assert "cuda goal compress_ms_w192_float32: met (5.000)" in out


def _no_measuring(monkeypatch):
    """Any measurement fails the test: a refused run must stop before loading the model."""
    def measured(*a, **kw):
        raise AssertionError("report.py measured something")
    monkeypatch.setattr(e2e, "load_model", measured)
    monkeypatch.setattr(e2e, "e2e_timings", measured)


@pytest.mark.parametrize("existing", ["README.md", "e2e.json", "cuda.json"])
def test_an_existing_report_is_refused_without_force(tmp_path, monkeypatch, capsys, existing):
    """The tracked folders under bench/results/ are what the README quotes: a run (make bench,
    --quick, --cuda-only) does not replace a report there unless --force, and measures nothing
    before refusing."""
    _no_measuring(monkeypatch)
    (tmp_path / existing).write_text("the team's numbers")
    for args in (["--quick"], ["--quick", "--cuda-dry-run"], ["--cuda-only", "--cuda-dry-run"]):
        assert report.main(args + ["--no-tune-malloc", "--out", str(tmp_path)]) == 2, args
        err = capsys.readouterr().err
        assert f"{tmp_path} already holds a report ({existing})" in err, err
        assert "--force to replace it, or --out DIR" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text() == "the team's numbers"


def test_make_bench_refuses_the_machine_folder_that_holds_a_report(tmp_path, monkeypatch,
                                                                     capsys):
    """No arguments (``make bench``): bench/results/<machine>/ with a report in it is refused."""
    _no_measuring(monkeypatch)
    monkeypatch.setattr(report, "HERE", str(tmp_path))
    folder = tmp_path / "results" / report.machine_name("cpu")
    folder.mkdir(parents=True)
    (folder / "README.md").write_text("the team's numbers")
    assert report.main(["--no-tune-malloc"]) == 2
    err = capsys.readouterr().err
    assert f"{folder} already holds a report (README.md); --force to replace it" in err


def test_on_a_gpu_the_cuda_folder_is_checked_too(tmp_path, monkeypatch, capsys):
    """On a CUDA machine the CUDA section goes to bench/results/cuda-<gpu>/ (with --out:
    <out>/cuda-<gpu>/; --cuda-only: --out itself): a report there is refused as well."""
    _no_measuring(monkeypatch)
    monkeypatch.setattr(report, "HERE", str(tmp_path))
    monkeypatch.setattr(report.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(report, "machine_name",
                        lambda device=None: "cuda-some-gpu" if device == "cuda" else "cpu-x")
    tracked = tmp_path / "results" / "cuda-some-gpu"
    tracked.mkdir(parents=True)
    (tracked / "README.md").write_text("the GPU table")
    assert report.main(["--cuda-only", "--no-tune-malloc"]) == 2   # gpu_session.sh's step
    assert f"{tracked} already holds a report" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    (fresh / "cuda-some-gpu").mkdir(parents=True)
    (fresh / "cuda-some-gpu" / "cuda.json").write_text("{}")
    assert report.main(["--quick", "--no-tune-malloc", "--out", str(fresh)]) == 2
    assert f"{fresh / 'cuda-some-gpu'} already holds a report" in capsys.readouterr().err
    assert not (tmp_path / "results" / "cpu-x").exists()


def test_force_replaces_an_existing_report(tmp_path):
    (tmp_path / "README.md").write_text("the team's numbers")
    assert report.main(["--quick", "--no-tune-malloc", "--no-memory", "--no-layers",
                        "--no-compressai", "--precisions", "fp32", "--force",
                        "--out", str(tmp_path)]) == 0
    md = (tmp_path / "README.md").read_text()
    assert md.startswith("# Benchmarks on") and "--force" in md
    assert (tmp_path / "e2e.json").exists()
    # --cuda-only (the GPU session rewrites its table after each row) with --force too
    cuda = tmp_path / "cuda"
    cuda.mkdir()
    (cuda / "cuda.json").write_text("{}")
    assert report.main(["--cuda-only", "--cuda-dry-run", "--quick", "--no-tune-malloc",
                        "--widths", "48", "--force", "--out", str(cuda)]) == 0
    assert json.loads((cuda / "cuda.json").read_text())["rows"]


def test_force_is_in_the_help():
    r = subprocess.run([sys.executable, os.path.join(BENCH, "report.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--force" in r.stdout and "replace the report" in r.stdout


def test_a_run_that_fails_while_plotting_leaves_the_earlier_tables_whole(tmp_path, monkeypatch):
    """(report.py wrote the four JSON files, then the plots, then README.md: a failure in the
    plots left new JSON beside the old README.md, which --force could mix into a tracked
    folder.) Everything is rendered and plotted before a table is replaced."""
    for name in ("e2e.json", "memory.json", "layers.json", "goals.json", "README.md"):
        (tmp_path / name).write_text("earlier " + name)

    def broken(*a, **k):
        raise RuntimeError("the plotting failed")
    monkeypatch.setattr(report, "plot_all", broken)
    with pytest.raises(RuntimeError, match="the plotting failed"):
        report.main(["--quick", "--threads", "1", "--no-tune-malloc", "--no-memory",
                     "--no-layers", "--no-compressai", "--force", "--out", str(tmp_path)])
    for name in ("e2e.json", "memory.json", "layers.json", "goals.json", "README.md"):
        assert (tmp_path / name).read_text() == "earlier " + name, name
