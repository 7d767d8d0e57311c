#!/usr/bin/env bash
# Every GPU check of this project in one prepared command, for a session that is lent a CUDA
# machine (GPUs are rare here and a lease is short: one call should do it all).
#
#   Here, once:   mkdir -p .gpu_carry && cp ../shared/data/kodak/kodim01.png .gpu_carry/
#                 (.gpu_carry/ is git-ignored; the ../shared data does not travel)
#   Device call:  run(command="bash bench/gpu_session.sh", carry=[".gpu_carry"], timeout_s=590)
#   Dry run here: GPU_SESSION_DRY=1 OUT=/tmp/gpu_out PY=.venv/bin/python bash bench/gpu_session.sh
#                 (CPU, tiny shapes; every result file goes under $OUT, none under bench/results/)
#   A later call: GPU_SESSION_SKIP="report" bash bench/gpu_session.sh  (the steps named are
#                 skipped; GPU_T_TESTS=... and the like set a step's limit for that call,
#                 GPU_SESSION_STEPS="tests profile" the steps and their order, GPU_TESTS the
#                 test paths, GPU_REPORT_WIDTHS / GPU_REPORT_COMPILE_WIDTHS ("" for none) /
#                 GPU_CONV_WIDTHS / GPU_CONV_LAYERS / GPU_PROFILE_WIDTHS what is measured)
#
# Steps, each under its own time limit so that one slow step leaves time for the others, in
# this order by default (GPU_SESSION_STEPS): the tests of the new code first, then the owed
# tables:
#   env        nvidia-smi, torch / triton / NumPy versions (triton 3.6's interpreter fails
#              with NumPy >= 2.4: slimkernels/kernels/interpreter.py)
#   build      the C++ extensions in place, with the machine's python3 (pybind11 is there)
#   tests      pytest -m "cuda or interpret": every Triton kernel test, compiled for the GPU,
#              against float64 references (pytest-xdist when the machine has it; one line per
#              failure, at most 30, so that the reasons arrive inside the time limit; no
#              autotuning: SLIMKERNELS_AUTOTUNE=0)
#   report     bench/report.py --cuda-only --force: end to end on CUDA (Triton + CUDA graphs vs
#              eager, torch.compile at w=192), the table in bench/results/cuda-<gpu>/ replaced
#              and rewritten after each row
#   profile    bench/gpu_profile.py: the kernels of each transform and of a GDN forward +
#              backward, from torch.profiler (slow kernel or launch-bound?)
#   conv       bench/bench_conv.py --device: sliced conv / tconv vs cuDNN per layer, fused
#              conv+GDN (where a GPU run of ours is slower than cuDNN: which layer)
#   graphs     bench/bench_cuda_graph.py: compress / decompress with cuda_graph False and True
#   gdn        bench/bench_gdn.py --no-cpu: GDN/IGDN forward and forward+backward vs eager and
#              torch.compile (gdn.* in the GPU's folder)
# The benchmark steps of a real run write only the GPU's own folder, bench/results/cuda-<gpu>/
# (report, profile, graphs, conv, gdn); never the CPU tables in bench/results/cpu/ or
# bench/results/cpu-*/, nor the H200's conv and GDN tables of an earlier layout
# (bench/results/gpu/conv.*, bench/results/cuda/gdn.*).
# Output in $OUT (default ./gpu_out), three files (the device returns at most 8): summary.txt
# (each step's status and time, and the last lines of a failed step's log), logs.tgz (one log
# per step) and results.tgz (every file the benchmarks wrote under bench/results/). Unpack the
# latter here with `tar xzf results.tgz` in the repository root, review, commit.
#
# PY: the interpreter (default python3: on the GPU machine that is the one with torch and
# triton; where python3 has no torch and ./.venv/bin/python exists, that one). Before anything
# is written the script checks that PY imports torch and, unless GPU_SESSION_DRY=1, that
# torch.cuda.is_available(): otherwise one line on stderr and exit status 2 (a CPU machine gets
# the dry run's command line). Exit status 1 when a step failed or timed out (skipped steps do
# not count, nor the report running out of time: it keeps the rows it wrote), after summary.txt
# and both archives are written; 0 when every step that ran passed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
DRY=${GPU_SESSION_DRY:-0}
if [ -z "${PY:-}" ]; then
    PY=python3
    if [ -x .venv/bin/python ] && ! python3 -c "import torch" > /dev/null 2>&1; then
        PY=.venv/bin/python  # a checkout set up by `make install`, whose python3 has no torch
    fi
fi
# exit 0: torch with a CUDA GPU; 3: torch without one; 4: torch does not import (the reason)
WHY=$("$PY" -c 'import sys
try:
    import torch
except Exception as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(4)
sys.exit(0 if torch.cuda.is_available() else 3)' 2>&1)
RC=$?
WHY=$(printf '%s\n' "$WHY" | tail -n 1)  # the exception, or why PY did not run
case $RC in
0) ;;
3) if [ "$DRY" != 1 ]; then
       echo "gpu_session.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False):" \
            "this script is for a GPU machine; for a CPU dry run:" \
            "GPU_SESSION_DRY=1 OUT=/tmp/gpu_out PY=.venv/bin/python bash bench/gpu_session.sh" >&2
       exit 2
   fi ;;
4) echo "gpu_session.sh: PY=$PY cannot import torch ($WHY): set PY to a python with torch," \
        "e.g. PY=.venv/bin/python" >&2
   exit 2 ;;
*) echo "gpu_session.sh: PY=$PY does not run (exit $RC: $WHY): set PY to a python with torch," \
        "e.g. PY=.venv/bin/python" >&2
   exit 2 ;;
esac
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
STAMP=$(mktemp)
export PYTHONUNBUFFERED=1

SKIP=" ${GPU_SESSION_SKIP:-} "  # e.g. GPU_SESSION_SKIP="report": steps whose result is already in
# The whole run stays inside one device command (600 s at most): each step's limit is cut to the
# time left before GPU_SESSION_BUDGET (default 575 s, leaving time to pack the archives), and a
# step with under 25 s left is skipped; the steps run in order of what is owed most.
BUDGET=${GPU_SESSION_BUDGET:-575}

step() {  # step NAME SECONDS CMD...: run CMD under a time limit, log it, record status + time
    local name=$1 limit=$2
    shift 2
    if [[ "$SKIP" == *" $name "* ]]; then
        printf '%-8s %-28s %4d s\n' "$name" "skipped (GPU_SESSION_SKIP)" 0 | tee -a "$SUMMARY"
        return
    fi
    local left=$((BUDGET - SECONDS))
    # (a step but the report, which keeps its rows, needs half its limit: cut to less it would
    # only time out and count as failed)
    if [ "$left" -lt 25 ] || { [ "$name" != report ] && [ $((left - 10)) -lt $((limit / 2)) ]; }; then
        printf '%-8s %-28s %4d s\n' "$name" "skipped (no time left)" 0 | tee -a "$SUMMARY"
        return
    fi
    [ "$limit" -gt $((left - 10)) ] && limit=$((left - 10))
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local what=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT after ${limit} s"
    [ $rc -ne 0 ] && [ "$what" = ok ] && what="FAILED (exit $rc)"
    local shown=$what
    # a dry run's tests on a machine without a GPU: every CUDA test skips, and a bare "ok" read
    # as if the kernels had passed (pytest's summary line then names no test that passed)
    if [ "$DRY" = 1 ] && [ "$name" = tests ] && [ "$what" = ok ] &&
        ! grep -Eq '[0-9]+ passed' "$OUT/$name.log"; then
        shown="ok (dry: all skipped, no GPU)"
    fi
    printf '%-8s %-28s %4d s\n' "$name" "$shown" $((SECONDS - t0)) | tee -a "$SUMMARY"
    if [ "$what" != ok ]; then  # the reason, where it is read first
        # (the report writes its table row by row and is expected to run out of time at the
        # last rows: a time-out there is partial, not failed)
        [ "$name" = report ] && [ "$what" != "${what#TIMED OUT}" ] || FAILED="$FAILED $name"
        tail -n 15 "$OUT/$name.log" | sed 's/^/    | /' >> "$SUMMARY"
    fi
}
FAILED=""  # the steps that failed or timed out (the report excepted): exit status 1 if any

# The benchmark image: Kodak's kodim01 when carried (see the top); else the bundled sample
# (256x192) tiled and cropped to Kodak's 768x512, so that the transforms' timings stay those of
# a Kodak-sized image (the entropy coding's part differs a little with the content): the bare
# sample had given 256x192 timings, not comparable with the Kodak rows
IMAGE=${GPU_CARRY_IMAGE:-.gpu_carry/kodim01.png}   # (GPU_CARRY_IMAGE: the tests' switch)
IMAGE_NOTE="kodim01 (carried)"
if [ ! -f "$IMAGE" ]; then
    IMAGE="$(mktemp -d)/sample_tiled_768x512.png"
    IMAGE_NOTE="slimkernels/assets/sample.png tiled to 768x512 (kodim01 NOT carried: pass carry=[\".gpu_carry\"])"
    if ! "$PY" bench/kodak_sized_sample.py "$IMAGE" 2>> "$SUMMARY"; then
        IMAGE=slimkernels/assets/sample.png
        IMAGE_NOTE="slimkernels/assets/sample.png, 256x192 (kodim01 NOT carried, tiling failed)"
    fi
fi
echo "image: $IMAGE_NOTE; dry run: $DRY" >> "$SUMMARY"

step env 10 bash -c "nvidia-smi || true; $PY -c 'import sys, numpy, torch, triton; \
print(sys.version); print(\"torch\", torch.__version__, \"triton\", triton.__version__, \
\"numpy\", numpy.__version__); \
print(\"cuda\", torch.cuda.is_available(), torch.cuda.get_device_name() \
if torch.cuda.is_available() else \"\")'"
if [ "$DRY" = 1 ]; then  # no rebuild under a running test process: check the built modules
    step build 80 "$PY" -c "import slimkernels._coder, slimkernels._cpu_kernels"
else
    # the three extensions in parallel (-j 3): setuptools copies them into the package only
    # after the last one is built, so a build cut by its limit left none; serial it took 32-50 s
    # on the H200 machine (2026-12-04) and ~1.5x that since
    step build 120 "$PY" setup.py -q build_ext --inplace -j 3
fi

# limits: 10 + 120 + 150 + 170 + 80 + 110 + 70 + 75 = 785 s at most, cut to GPU_SESSION_BUDGET;
# measured on the H200 machine (2026-12-04, sittings 17 and 18): build 32-50 s, tests 86 s (170
# tests, xdist), report > 170 s for 5 widths with torch.compile at two (cut during the 10th of 10
# rows), ~25 s a row without, conv ~4.5 s a row after ~15 s of start (w=192,48: 24 rows),
# profile ~25-36 s per width, graphs 55 s, gdn 73 s. By those times one call ends inside conv
# (env 5 + build ~60 + tests ~137 + report 170 + profile ~70 = ~440 s of the 575: conv gets
# ~125 s less its start, ~20 of its 24 rows) and skips graphs and gdn, whose H200 tables exist;
# conv, gdn, profile, graphs and the report write their files after every row, so a step cut by
# its limit keeps what it measured. A device lease is ~15 minutes with the machine's start: a
# second call, with GPU_SESSION_STEPS naming what is left, only where time remains.
RESULTS=bench/results
XDIST=""
"$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
if [ "$DRY" = 1 ]; then
    RESULTS="$OUT/dry_gdn $OUT/dry_conv $OUT/dry_report $OUT/dry_profile $OUT/dry_graphs"
    step report 180 "$PY" bench/report.py --quick --cuda-only --cuda-dry-run \
        --widths 192,48 --compile-widths 192 --image "$IMAGE" --out "$OUT/dry_report"
    step tests 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
    step graphs 120 "$PY" bench/bench_cuda_graph.py --dry-run --widths 48 --repeats 2 \
        --out "$OUT/dry_graphs"
    step gdn 120 "$PY" bench/bench_gdn.py --dry-run --out "$OUT/dry_gdn" \
        --cuda-dir "$OUT/dry_gdn/gpu"
    step conv 120 "$PY" bench/bench_conv.py --dry-run --out "$OUT/dry_conv"
    step profile 60 "$PY" bench/gpu_profile.py --dry-run --widths 48 --calls 1 --image "$IMAGE" \
        --out "$OUT/dry_profile"
else
    # SLIMKERNELS_AUTOTUNE=0 in the tests: each kernel's first config only (one compile per
    # specialisation, not one per config); the benchmark steps run the autotuned kernels, and
    # bench_conv checks each autotuned layer against cuDNN (rel_err_vs_cudnn)
    # (tests: 271 tests are marked cuda or interpret on 2026-12-07 against the 170 of the 86 s
    # measured: ~137 s by that count, not measured)
    T_REPORT=170 T_TESTS=150 T_CONV=110 T_PROFILE=80 T_GDN=75 T_GRAPHS=70
    # a later call can set each limit, the widths, the tests and the order of the steps
    # (GPU_T_TESTS=140 GPU_CONV_WIDTHS=48 GPU_SESSION_STEPS="tests profile" ...)
    T_REPORT=${GPU_T_REPORT:-$T_REPORT} T_TESTS=${GPU_T_TESTS:-$T_TESTS}
    T_CONV=${GPU_T_CONV:-$T_CONV} T_PROFILE=${GPU_T_PROFILE:-$T_PROFILE} T_GDN=${GPU_T_GDN:-$T_GDN}
    T_GRAPHS=${GPU_T_GRAPHS:-$T_GRAPHS}
    REPORT_CW=${GPU_REPORT_COMPILE_WIDTHS-192}
    # the per-layer conv and GDN tables go to this GPU's own folder, beside the report's (the
    # H200's bench/results/gpu/conv.* and cuda/gdn.* stay as they are)
    SLUG=$("$PY" -c 'import sys; sys.path.insert(0, "bench")
import report; print(report.machine_name("cuda"))' 2>/dev/null | tail -n 1)
    case $SLUG in cuda-*) ;; *) SLUG=cuda-unknown ;; esac   # (a name, never a path)
    GPU_DIR=bench/results/$SLUG
    run_step() {
        case $1 in
        # --force: the table of this GPU (bench/results/cuda-<gpu>/) is there to be replaced
        report) step report "$T_REPORT" "$PY" bench/report.py --cuda-only --force --repeats 10 \
                    --widths "${GPU_REPORT_WIDTHS:-192,48,96,144,72}" \
                    --compile-widths "$REPORT_CW" --image "$IMAGE" \
                    --note "bench/gpu_session.sh on a lent GPU machine" ;;
        # shellcheck disable=SC2086  # XDIST is empty or two words, GPU_TESTS a path list
        # (-v: each test's result in the log as it ends, kept when the limit cuts the run)
        tests) step tests "$T_TESTS" env SLIMKERNELS_AUTOTUNE=0 "$PY" -m pytest -v \
                    -m "cuda or interpret" -p no:cacheprovider $XDIST --tb=line -rf \
                    --maxfail=30 ${GPU_TESTS:-tests} ;;
        # compress / decompress with and without cuda_graph=True (the library's CUDA-graph path)
        graphs) step graphs "$T_GRAPHS" "$PY" bench/bench_cuda_graph.py --widths 192,48 \
                    --image "$IMAGE" ;;
        # per layer on the Kodak shape; no torch.compile column (a fresh max-autotune compile
        # per layer, width and dtype takes minutes; the e2e report has torch.compile)
        conv) step conv "$T_CONV" "$PY" bench/bench_conv.py --device --no-cpu \
                    --widths "${GPU_CONV_WIDTHS:-192,48}" ${GPU_CONV_LAYERS:+--layers "$GPU_CONV_LAYERS"} \
                    --shapes 1x512x768 --compile-mode none --out "$GPU_DIR" ;;
        profile) step profile "$T_PROFILE" "$PY" bench/gpu_profile.py \
                    --widths "${GPU_PROFILE_WIDTHS:-192,48}" --image "$IMAGE" ;;
        gdn) step gdn "$T_GDN" "$PY" bench/bench_gdn.py --no-cpu --widths 192,96,48 \
                    --cuda-dir "$GPU_DIR" ;;
        *) echo "unknown step in GPU_SESSION_STEPS: $1" | tee -a "$SUMMARY"
           FAILED="$FAILED $1" ;;
        esac
    }
    for s in ${GPU_SESSION_STEPS:-tests report profile conv graphs gdn}; do
        run_step "$s"
    done
fi

# every result file written during this run, in one archive (the device returns at most 8 files)
# shellcheck disable=SC2086  # RESULTS is a list of folders
# (member names relative: bench/results/... from the repository root; a dry run's dry_*/... from
# inside $OUT, whose absolute path tar would otherwise store without its leading slash)
if [ "$DRY" = 1 ]; then
    (cd "$OUT" && find ${RESULTS//"$OUT/"/} -type f -newer "$STAMP" -print0 2>/dev/null |
        tar czf results.tgz --null -T - 2>/dev/null)
else
    find $RESULTS -type f -newer "$STAMP" -print0 2>/dev/null | tar czf "$OUT/results.tgz" --null -T - 2>/dev/null
fi
rm -f "$STAMP"
# shellcheck disable=SC2086  # a dry run's result folders are inside $OUT: archived, not kept
[ "$DRY" = 1 ] && rm -rf $RESULTS
# the step logs in one archive too: summary.txt, logs.tgz and results.tgz are all that comes back
(cd "$OUT" && tar czf logs.tgz ./*.log && rm -f ./*.log)
[ -n "$FAILED" ] && echo "failed:$FAILED (exit status 1)" | tee -a "$SUMMARY"
echo "results.tgz: $(tar tzf "$OUT/results.tgz" | wc -l) files" | tee -a "$SUMMARY"
[ -z "$FAILED" ]  # the exit status: 1 when a step failed
