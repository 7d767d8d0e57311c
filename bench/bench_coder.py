"""Entropy-coder benchmark on the Kodak-like workload of ANCHORS.md.

294,912 symbols (192 channels x 32 x 48), Laplace-like with a per-channel scale, 81-symbol
alphabet + escape per channel, 16-bit CDFs. Measures, in the same run and on the same data:

* slimkernels.coding (C++ interleaved rANS): encode / decode with 1 and 2 streams;
* CompressAI's rANS (``compressai/ans*.so`` loaded directly, Python lists prepared outside the
  timed region, and separately the ``.tolist()`` conversion that its API forces on callers);
* constriction's range coder and ANS coder with one categorical model per channel (models built
  outside the timed region; values of escaped symbols are clamped to the escape slot, so
  constriction codes slightly less information than the others).

Each time is the median of ``--repeat`` runs after ``--warmup`` runs. Speeds are reported in
M symbols/s and as ratios against CompressAI measured in the same run. Sizes are compared with
the ideal ``-sum log2 p`` under the quantized CDFs (escape bypass bits not included).

Usage::

    python bench/bench_coder.py [--repeat 21] [--warmup 3] [--out bench/results/cpu]

Writes ``coder.json`` and ``coder.md`` into ``--out``; files already there (the default folder
holds the tracked tables) are refused before anything is measured, unless ``--force``.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from slimkernels import coding  # noqa: E402


def laplace_scales(channels):
    return np.exp(np.linspace(np.log(0.3), np.log(8.0), channels))


def laplace_pmfs(channels=192, n_sym=81):
    """Discretized Laplace pmfs [channels, n_sym] (integers -n_sym//2 ..) and tail masses."""
    half = n_sym // 2
    x = np.arange(-half, half + 1, dtype=np.float64)
    pmfs = np.empty((channels, n_sym))
    for c, b in enumerate(laplace_scales(channels)):
        lo, hi = x - 0.5, x + 0.5
        cdf_hi = np.where(hi < 0, 0.5 * np.exp(hi / b), 1 - 0.5 * np.exp(-hi / b))
        cdf_lo = np.where(lo < 0, 0.5 * np.exp(lo / b), 1 - 0.5 * np.exp(-lo / b))
        pmfs[c] = cdf_hi - cdf_lo
    tails = np.clip(1.0 - pmfs.sum(1), 0.0, None)
    return pmfs, tails


def kodak_like_workload(seed=0, channels=192, h=32, w=48, n_sym=81, precision=16):
    """Symbols [1, channels, h, w] int32, indexes, and per-channel discretized-Laplace tables.

    Scales are log-spaced in [0.3, 8]; symbols are Laplace samples rounded to integers (values
    beyond the alphabet become escapes, as in a real latent).
    """
    rng = np.random.default_rng(seed)
    half = n_sym // 2
    scales = laplace_scales(channels)
    pmfs, tails = laplace_pmfs(channels, n_sym)
    cdfs, lengths = coding.pmfs_to_quantized_cdfs(pmfs, np.full(channels, n_sym, np.int32), tails,
                                                  precision=precision)
    offsets = np.full(channels, -half, np.int32)
    sym = np.round(rng.laplace(0.0, scales[:, None], (channels, h * w)))
    sym = sym.astype(np.int32).reshape(1, channels, h, w)
    idx = np.ascontiguousarray(
        np.broadcast_to(np.arange(channels, dtype=np.int32)[None, :, None, None], sym.shape))
    return sym, idx, cdfs, lengths, offsets




def escape_bypass_bytes(sym, idx, lengths, offsets):
    """Bytes of bypass bits slimkernels spends on escapes (6-bit length + k bits, docs/coder.md)."""
    i = idx.reshape(-1)
    v = sym.reshape(-1).astype(np.int64) - offsets[i]
    nd = (lengths[i] - 2).astype(np.int64)
    esc = (v < 0) | (v >= nd)
    z = np.where(v < 0, 2 * (-v - 1) + 1, 2 * (v - nd))[esc]
    k = np.floor(np.log2(z + 1.0)).astype(np.int64)
    return float((6 + k).sum() / 8)


def timeit(fn, repeat, warmup):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def load_compressai_ext(name):
    """CompressAI's compiled module ``compressai.<name>`` (``ans``, ``_CXX``), loaded by file
    path (the package import pulls heavy deps), or None. Registered under its real name and
    reused when already loaded: a pybind11 module initialised twice in one process (e.g. by
    CompressAI's own entropy_models.py in a test run) crashes the interpreter at exit."""
    full = f"compressai.{name}"
    if full in sys.modules:
        return sys.modules[full]
    for d in sys.path:
        hits = glob.glob(os.path.join(d, "compressai", f"{name}*.so"))
        if hits:
            spec = importlib.util.spec_from_file_location(full, hits[0])
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            sys.modules[full] = mod
            return mod
    return None


def load_compressai_ans():
    """CompressAI's ``ans`` extension (see load_compressai_ext)."""
    return load_compressai_ext("ans")


def quantization_loss(channels=192, n_sym=81, precision=16):
    """Mean cross-entropy excess (bits/symbol) of quantized CDFs over the true pmf entropy:
    slimkernels.coding.pmf_to_quantized_cdf vs CompressAI's pmf_to_quantized_cdf (_CXX)."""
    pmfs, tails = laplace_pmfs(channels, n_sym)
    cxx = load_compressai_ext("_CXX")
    out = {"slimkernels": 0.0, "compressai": 0.0 if cxx else None}
    for c in range(channels):
        p = np.append(pmfs[c], tails[c])
        pn = p / p.sum()
        ent = -(pn[pn > 0] * np.log2(pn[pn > 0])).sum()
        for name, cdf in (("slimkernels", coding.pmf_to_quantized_cdf(p, precision)),
                          ("compressai", cxx.pmf_to_quantized_cdf(p.tolist(), precision)
                           if cxx else None)):
            if cdf is None:
                continue
            q = np.diff(np.asarray(cdf, np.float64)) / (1 << precision)
            out[name] += float(-(pn * np.log2(q)).sum() - ent) / channels
    return out


def interleaved(fns, repeat, warmup, block=5):
    """Median time per call of each callable. The callables take turns in blocks of ``block``
    back-to-back calls (all of them timed), so that every one sees the same machine load while
    each still runs as in a loop of calls (caches and worker threads as its previous call left
    them, except for the first call of a block)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    ts = [[] for _ in fns]
    for _ in range(max(1, -(-repeat // block))):
        for t, fn in zip(ts, fns):
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def isolated(fns, repeat, idle_s=0.005):
    """Median time of single calls, each after ``idle_s`` of sleep (the coder's worker threads
    have gone to sleep by then: this includes waking them)."""
    ts = [[] for _ in fns]
    for _ in range(repeat):
        for t, fn in zip(ts, fns):
            time.sleep(idle_s)
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


#: (streams, threads, indexes): "symbol" = one CDF index per symbol (CompressAI's contract),
#: "channel" = the compact per-channel form ([1, C, 1, 1]) that compress uses; same bytes.
#: 1 stream on 2 threads: the encoder codes the substream's lanes in two halves (the bytes of
#: 1 thread; decode runs one thread per substream).
SLIM_CONFIGS = ((1, 1, "symbol"), (2, 2, "symbol"), (2, 1, "symbol"), (1, 1, "channel"),
                (2, 2, "channel"), (1, 2, "channel"))


def bench_slimkernels(work, n, repeat, warmup):
    """Encode and decode with 1 and 2 streams; the configurations run interleaved, so that their
    ratios compare the same moments of a shared machine."""
    sym, idx, cdfs, lengths, offsets = work
    compact = np.ascontiguousarray(idx[:, :, :1, :1])       # the workload's index is the channel
    assert np.array_equal(np.broadcast_to(compact, idx.shape), idx)
    datas, fns, decs = [], [], []
    for streams, threads, form in SLIM_CONFIGS:
        ix = idx if form == "symbol" else compact
        data = coding.encode(sym, ix, cdfs, lengths, offsets, streams=streams, threads=threads)
        out = coding.decode(data, ix, cdfs, lengths, offsets, threads=threads, shape=sym.shape)
        assert np.array_equal(out, sym), "slimkernels round trip failed"
        datas.append(data)
        fns.append(lambda s=streams, t=threads, ix=ix: coding.encode(
            sym, ix, cdfs, lengths, offsets, streams=s, threads=t))
        decs.append(lambda d=data, t=threads, ix=ix: coding.decode(
            d, ix, cdfs, lengths, offsets, threads=t, shape=sym.shape))
    enc = interleaved(fns, repeat, warmup)
    dec = interleaved(decs, repeat, warmup)
    iso_e = isolated(fns, repeat)
    iso_d = isolated(decs, repeat)
    rows = []
    for k, ((streams, threads, form), te, td, data) in enumerate(zip(SLIM_CONFIGS, enc, dec,
                                                                       datas)):
        name = f"slimkernels rANS, {streams} stream(s), {threads} thread(s)"
        rows.append(dict(coder=name + (", per-channel indexes" if form == "channel" else ""),
                         streams=streams, threads=threads, indexes=form, encode_s=te, decode_s=td,
                         encode_msym_s=n / te / 1e6, decode_msym_s=n / td / 1e6,
                         size_bytes=len(data), isolated_encode_s=iso_e[k],
                         isolated_decode_s=iso_d[k]))
    return rows


def time_split(work, repeat, warmup):
    """Where a call's time goes, 1 and 2 streams: the Python wrapper (slimkernels.coding) vs the
    C++ call (slimkernels._coder), and the one-off cost of new tables (validation and, for
    decode, the lookup-table build) measured by cycling through more table sets than the coder
    caches. The variants differ only in an extra padding column (ignored by the coder, part of
    the content the cache compares), so they code exactly the same data."""
    from slimkernels import _coder
    sym, idx, cdfs, lengths, offsets = work
    variants = [np.ascontiguousarray(np.concatenate(
        [cdfs, np.full((cdfs.shape[0], 1), v, np.int32)], axis=1)) for v in range(12)]
    out = {}
    for streams, threads, _ in SLIM_CONFIGS[:2]:
        data = coding.encode(sym, idx, cdfs, lengths, offsets, streams=streams)
        assert coding.encode(sym, idx, variants[1], lengths, offsets, streams=streams) == data
        cyc = {"enc": 0, "dec": 0}

        def enc_cold():
            cyc["enc"] += 1
            _coder.encode(sym, idx, variants[cyc["enc"] % len(variants)], lengths, offsets, 16,
                          streams, threads)

        def dec_cold():
            cyc["dec"] += 1
            _coder.decode(data, idx, variants[cyc["dec"] % len(variants)], lengths, offsets, 16,
                          threads)

        t = interleaved([
            lambda: coding.encode(sym, idx, cdfs, lengths, offsets, streams=streams,
                                  threads=threads),
            lambda: _coder.encode(sym, idx, cdfs, lengths, offsets, 16, streams, threads),
            enc_cold,
            lambda: coding.decode(data, idx, cdfs, lengths, offsets, threads=threads),
            lambda: _coder.decode(data, idx, cdfs, lengths, offsets, 16, threads),
            dec_cold], repeat, warmup)
        ts, ti = sym.reshape(-1)[:16].copy(), idx.reshape(-1)[:16].copy()
        tdata = coding.encode(ts, ti, cdfs, lengths, offsets)
        tiny = interleaved([
            lambda: coding.encode(ts, ti, cdfs, lengths, offsets),
            lambda: _coder.encode(ts, ti, cdfs, lengths, offsets, 16, 1, 1),
            lambda: coding.decode(tdata, ti, cdfs, lengths, offsets),
            lambda: _coder.decode(tdata, ti, cdfs, lengths, offsets, 16, 1)],
            max(repeat, 50), warmup)
        out[f"{streams}_stream"] = dict(
            streams=streams, threads=threads,
            encode_wrapper_16_symbols_s=tiny[0] - tiny[1],
            decode_wrapper_16_symbols_s=tiny[2] - tiny[3],
            encode_python_s=t[0], encode_cxx_s=t[1], encode_new_tables_s=t[2],
            decode_python_s=t[3], decode_cxx_s=t[4], decode_new_tables_s=t[5])
    return out


def bench_compressai(work, n, repeat, warmup):
    ans = load_compressai_ans()
    if ans is None:
        return [], "compressai not installed (pip install --no-deps compressai)"
    sym, idx, cdfs, lengths, offsets = work
    args = (idx.reshape(-1).tolist(), [row[:L].tolist() for row, L in zip(cdfs, lengths)],
            lengths.tolist(), offsets.tolist())
    sl = sym.reshape(-1).tolist()
    enc, dec = ans.RansEncoder(), ans.RansDecoder()
    data = enc.encode_with_indexes(sl, *args)
    out = np.array(dec.decode_with_indexes(data, *args), np.int32)
    assert np.array_equal(out, sym.reshape(-1)), "compressai round trip failed"
    te = timeit(lambda: enc.encode_with_indexes(sl, *args), repeat, warmup)
    td = timeit(lambda: dec.decode_with_indexes(data, *args), repeat, warmup)
    # What a caller pays on top: numpy -> lists for every call (symbols, indexes, table).
    tl = timeit(lambda: (sym.reshape(-1).tolist(), idx.reshape(-1).tolist(),
                         [row[:L].tolist() for row, L in zip(cdfs, lengths)]),
                max(3, repeat // 3), 1)
    # indexes: the form of the CDF index the coder takes (main's table keys rows by it)
    return [dict(coder="CompressAI rANS (compressai.ans, lists prepared)", streams=1, threads=1,
                 indexes="symbol", encode_s=te, decode_s=td, encode_msym_s=n / te / 1e6,
                 decode_msym_s=n / td / 1e6, size_bytes=len(data), tolist_s=tl,
                 encode_msym_s_with_tolist=n / (te + tl) / 1e6,
                 decode_msym_s_with_tolist=n / (td + tl) / 1e6)], None


def bench_constriction(work, n, repeat, warmup):
    try:
        import constriction
    except ImportError:
        return [], "constriction not installed (pip install constriction)"
    sym, idx, cdfs, lengths, offsets = work
    channels = sym.shape[1]
    v = sym.reshape(channels, -1).astype(np.int64) - offsets[:, None]
    nd = (lengths - 2)[:, None]
    v = np.where((v < 0) | (v >= nd), nd, v).astype(np.int32)  # escapes -> escape slot
    models = [constriction.stream.model.Categorical(
        np.diff(cdfs[c, :lengths[c]]).astype(np.float64) / 65536.0, perfect=False)
        for c in range(channels)]
    rows = []
    for name, enc_cls, dec_make in (
            ("constriction range coder (queue)", constriction.stream.queue.RangeEncoder,
             lambda comp: constriction.stream.queue.RangeDecoder(comp)),
            ("constriction ANS (stack)", constriction.stream.stack.AnsCoder,
             lambda comp: constriction.stream.stack.AnsCoder(comp))):
        is_ans = "ANS" in name

        def encode():
            e = enc_cls()
            order = range(channels - 1, -1, -1) if is_ans else range(channels)
            for c in order:
                e.encode_reverse(v[c], models[c]) if is_ans else e.encode(v[c], models[c])
            return e.get_compressed()

        comp = encode()

        def decode():
            d = dec_make(comp)
            return [d.decode(models[c], v.shape[1]) for c in range(channels)]

        out = np.stack(decode())
        assert np.array_equal(out, v), f"{name} round trip failed"
        te = timeit(encode, repeat, warmup)
        td = timeit(decode, repeat, warmup)
        rows.append(dict(coder=name + ", categorical per channel", streams=1, threads=1,
                         indexes="channel", encode_s=te, decode_s=td, encode_msym_s=n / te / 1e6,
                         decode_msym_s=n / td / 1e6, size_bytes=int(comp.nbytes)))
    return rows, None


def check_args(ap: argparse.ArgumentParser, args) -> tuple:
    """Refuse bad options with ``ap.error`` (one line, exit status 2) before anything is
    measured: ``--repeat`` < 1 (a StatisticsError at the first median), ``--warmup`` < 0, an
    ``--out`` that is not a folder, and result files already there without ``--force`` (the
    default folder holds the tracked tables). Sets ``args.out`` to its default if not given;
    returns the ``(json, md)`` paths to write."""
    if args.repeat < 1 or args.warmup < 0:
        ap.error(f"--repeat must be at least 1 and --warmup at least 0, got {args.repeat} / "
                 f"{args.warmup}")
    if args.out is None:
        args.out = os.path.join(HERE, "results", "cpu")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        ap.error(f"--out {args.out} is a file: give a folder")
    stem = "coder_slimkernels" if args.only_slimkernels else "coder"
    files = tuple(os.path.join(args.out, stem + ext) for ext in (".json", ".md"))
    have = [f for f in files if os.path.exists(f)]
    if have and not args.force:
        ap.error(f"--out {args.out} already holds {os.path.basename(have[0])}: --force to "
                 f"replace it, or --out DIR")
    return files


def command_line(args) -> str:
    """The command line stored with the results: every option that changes what was measured
    or where it went (``--out`` and ``--note`` as given)."""
    import shlex
    cmd = f"python bench/bench_coder.py --repeat {args.repeat} --warmup {args.warmup}"
    if args.only_slimkernels:
        cmd += " --only-slimkernels"
    if args.out != os.path.join(HERE, "results", "cpu"):
        cmd += " --out " + shlex.quote(args.out)
    if args.note:
        cmd += " --note " + shlex.quote(args.note)
    return cmd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=21, help="timed runs per median (default 21)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    ap.add_argument("--out", default=None,
                    help="folder to write coder.json and coder.md into (coder_slimkernels.* "
                         "with --only-slimkernels; default bench/results/cpu, the tracked "
                         "tables)")
    ap.add_argument("--force", action="store_true",
                    help="replace the coder*.json / .md already in --out (refused without it, "
                         "before anything is measured)")
    ap.add_argument("--only-slimkernels", action="store_true",
                    help="skip CompressAI and constriction (quick check of the multi-stream "
                         "speed-up); writes coder_slimkernels.json/md instead")
    ap.add_argument("--note", default="",
                    help="text recorded with the results (e.g. how the machine was kept quiet)")
    args = ap.parse_args(argv)
    out_files = check_args(ap, args)

    work = kodak_like_workload()
    sym = work[0]
    n = sym.size
    ideal = coding.ideal_bytes(*work)
    bypass = escape_bypass_bytes(sym, work[1], work[3], work[4])
    load_before = os.getloadavg()
    rows = bench_slimkernels(work, n, args.repeat, args.warmup)
    notes = []
    split = time_split(work, args.repeat, args.warmup)
    for fn in (() if args.only_slimkernels else (bench_compressai, bench_constriction)):
        r, note = fn(work, n, args.repeat, args.warmup)
        rows += r
        if note:
            notes.append(note)
    load_after = os.getloadavg()
    qloss = quantization_loss()

    base = next((r for r in rows if r["coder"].startswith("CompressAI")), None)
    single = rows[0]
    for r in rows:
        r["size_vs_ideal"] = r["size_bytes"] / ideal - 1
        if r["coder"].startswith("slimkernels"):
            r["overhead_bytes_vs_ideal_plus_bypass"] = r["size_bytes"] - ideal - bypass
        if base:
            r["encode_vs_compressai"] = base["encode_s"] / r["encode_s"]
            r["decode_vs_compressai"] = base["decode_s"] / r["decode_s"]
        r["encode_vs_slim_1_stream"] = single["encode_s"] / r["encode_s"]
        r["decode_vs_slim_1_stream"] = single["decode_s"] / r["decode_s"]

    escapes = int(np.sum(np.abs(sym) > 40))
    meta = dict(symbols=n, channels=int(sym.shape[1]), alphabet=81, precision=16,
                escapes=escapes, ideal_bytes=ideal, slimkernels_escape_bypass_bytes=bypass, repeat=args.repeat, warmup=args.warmup,
                statistic="median wall time", machine=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), loadavg_before=load_before, loadavg_after=load_after,
                python=platform.python_version(), notes=notes,
                quantization_loss_bits_per_symbol=qloss, time_split=split)

    head = ("| coder | encode M sym/s | decode M sym/s | encode vs CompressAI | "
            "decode vs CompressAI | size B | vs ideal |")
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio_e = f"{r['encode_vs_compressai']:.1f}x" if base else "-"
        ratio_d = f"{r['decode_vs_compressai']:.1f}x" if base else "-"
        lines.append(f"| {r['coder']} | {r['encode_msym_s']:.1f} | {r['decode_msym_s']:.1f} | "
                     f"{ratio_e} | {ratio_d} | {r['size_bytes']:,} | "
                     f"{100 * r['size_vs_ideal']:+.3f} % |")
    table = "\n".join(lines)
    print(f"Kodak-like workload: {n:,} symbols, {sym.shape[1]} CDFs x 81 symbols, 16-bit, "
          f"{escapes} escapes; ideal {ideal:,.0f} B; load average {load_before[0]:.2f} -> "
          f"{load_after[0]:.2f}")
    print(table)
    if base:
        print(f"CompressAI incl. numpy->list conversion ({base['tolist_s'] * 1e3:.1f} ms/call): "
              f"encode {base['encode_msym_s_with_tolist']:.1f}, decode "
              f"{base['decode_msym_s_with_tolist']:.1f} M sym/s")
    two = next(r for r in rows if r["streams"] == 2 and r["threads"] == 2)
    # (slimkernels' rows only: the configurations compared; another coder's row of the same
    # streams / threads must not stand in for one of them)
    by_cfg = {(r["streams"], r["threads"], r["indexes"]): r for r in rows
              if r["coder"].startswith("slimkernels")}
    halves, one_ch = by_cfg.get((1, 2, "channel")), by_cfg.get((1, 1, "channel"))
    halves_txt = ("" if halves is None or one_ch is None else
                  f"1 stream on 2 threads (the encoder's lane halves) vs 1 thread, per-channel "
                  f"indexes: encode {one_ch['encode_s'] / halves['encode_s']:.2f}x, same bytes: "
                  f"{halves['size_bytes'] == one_ch['size_bytes']}")
    overheads = ", ".join(f"{r['streams']} stream(s) {r['overhead_bytes_vs_ideal_plus_bypass']:.0f} B"
                          for r in rows if "overhead_bytes_vs_ideal_plus_bypass" in r)
    print(f"slimkernels size - (ideal + {bypass:.0f} B of escape bypass bits): {overheads}")
    iso = (f"single calls after 5 ms idle (workers asleep): 1 stream encode "
           f"{single['isolated_encode_s'] * 1e6:.0f} us, decode "
           f"{single['isolated_decode_s'] * 1e6:.0f} us; 2 streams / 2 threads encode "
           f"{two['isolated_encode_s'] * 1e6:.0f} us "
           f"({single['isolated_encode_s'] / two['isolated_encode_s']:.2f}x), decode "
           f"{two['isolated_decode_s'] * 1e6:.0f} us "
           f"({single['isolated_decode_s'] / two['isolated_decode_s']:.2f}x)")
    print(f"2 streams / 2 threads vs 1 stream: encode {two['encode_vs_slim_1_stream']:.2f}x, "
          f"decode {two['decode_vs_slim_1_stream']:.2f}x")
    print(halves_txt)
    print(iso)
    split_lines = ["| op, streams, threads | Python call | C++ call | Python wrapper (16-symbol "
                   "call) | C++ call, new tables | new-tables cost |",
                   "| --- | --- | --- | --- | --- | --- |"]
    for sp in split.values():
        for op in ("encode", "decode"):
            py_s, cx_s, new_s = (sp[f"{op}_python_s"], sp[f"{op}_cxx_s"],
                                 sp[f"{op}_new_tables_s"])
            split_lines.append(
                f"| {op}, {sp['streams']}, {sp['threads']} | {py_s * 1e6:.0f} us | "
                f"{cx_s * 1e6:.0f} us | {sp[f'{op}_wrapper_16_symbols_s'] * 1e6:+.1f} us | "
                f"{new_s * 1e6:.0f} us | {(new_s - cx_s) * 1e6:+.0f} us |")
    split_table = "\n".join(split_lines)
    print("time split (median per call; 'new tables': tables not seen recently, so validated "
          "and, for decode, lookup tables built):")
    print(split_table)
    qtxt = ", ".join(f"{k} {v:.2e}" for k, v in qloss.items() if v is not None)
    print(f"pmf -> 16-bit CDF quantization loss (bits/symbol over the entropy, mean of "
          f"{sym.shape[1]} Laplace channels): {qtxt}")
    for note in notes:
        print("note:", note)

    os.makedirs(args.out, exist_ok=True)
    cmd = command_line(args)
    meta["command"] = cmd
    meta["note"] = args.note
    with open(out_files[0], "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=2)
    with open(out_files[1], "w") as f:
        f.write("# Entropy coder, Kodak-like workload (CPU)\n\n")
        f.write(f"`{cmd}`: "
                f"{n:,} symbols, {sym.shape[1]} CDFs x 81 symbols + escape, 16-bit, "
                f"{escapes} escapes, ideal {ideal:,.0f} B (escape bypass bits excluded). "
                f"Median of {args.repeat} runs, {os.cpu_count()} CPUs, load average "
                f"{load_before[0]:.2f} before / {load_after[0]:.2f} after (shared machine).\n\n")
        if args.note:
            f.write(f"{args.note}\n\n")
        f.write(table + "\n")
        if base:
            f.write(f"\nCompressAI's API takes Python lists: with the numpy -> list conversion a "
                    f"caller pays ({base['tolist_s'] * 1e3:.1f} ms per call) it runs at "
                    f"{base['encode_msym_s_with_tolist']:.1f} M sym/s encode and "
                    f"{base['decode_msym_s_with_tolist']:.1f} M sym/s decode.\n")
        f.write(f"\nslimkernels spends {bypass:.0f} B on escape bypass bits ({escapes} escapes); "
                f"its size minus (ideal + bypass): {overheads} (header + final rANS states).\n")
        f.write(f"\n2 streams on 2 threads vs 1 stream: encode "
                f"{two['encode_vs_slim_1_stream']:.2f}x, decode "
                f"{two['decode_vs_slim_1_stream']:.2f}x (the slimkernels configurations take "
                f"turns in blocks of 5 back-to-back calls; median per call). In {iso}.\n")
        if halves_txt:
            f.write(f"\n{halves_txt}.\n")
        f.write("\nTime split, median per call. Python call: `slimkernels.coding`; C++ call: "
                "`slimkernels._coder` on the same arrays; Python wrapper: the difference of "
                "the two on a 16-symbol call (its fixed cost; nothing in it scales with the "
                "data); new tables: the C++ call with tables the coder has not seen "
                "recently (validated again; decode also builds its lookup tables), measured by "
                "cycling through 12 copies of the tables that differ only in an extra padding "
                "column (more than the 8 table sets the coder keeps).\n\n")
        f.write(split_table + "\n")
        f.write("\nconstriction codes escaped values as the escape slot only (no bypass bits) "
                "and builds its models outside the timed region.\n")
        f.write(f"\npmf -> 16-bit CDF quantization loss, bits/symbol above the entropy of the "
                f"true pmf (mean over the {sym.shape[1]} Laplace channels): {qtxt}.\n")
        for note in notes:
            f.write(f"\nNote: {note}\n")
    return rows


if __name__ == "__main__":
    main()
