#!/usr/bin/env python
"""Turn a training checkpoint into a model file (fp32 weights + integer CDF tables + info).

    python python/export_model.py runs/slimcae/checkpoint.pt slimkernels/pretrained/slimcae.pt

The weights are the moving average of the training weights when the checkpoint has one (the
trainer's --ema, on by default; --raw takes the training weights instead); the CDF tables are built
from the exported entropy model. The info stored with the model records the training run: steps,
crop sizes, lambdas (initial and current), learning rate, which weights, the data folder's name
(not its path), and the log's last validation. Refuses to overwrite without --force.

A fine-tuning branch (e.g. a copy of the run resumed with a lower --lr and --no-schedule) has no
schedule state of its own: --schedule-from MAIN_CHECKPOINT records the main run's (its lambdas
must equal the branch's), so that --init MODEL --init-continue --schedule resumes the schedule
where the main run is; --note TEXT is stored in the info as well (what the branch did).
"""
import argparse
import json
import os
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimkernels.io import load_torch_file  # noqa: E402
from slimkernels.pretrained import load_model, save_model  # noqa: E402


def load_checkpoint(path: str) -> dict:
    """The trainer's checkpoint at ``path`` (a dict with ``model``, ``config`` (a dict),
    ``step``...); ValueError saying what is wrong with it otherwise."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder: give the checkpoint file in it, e.g. "
                         f"{os.path.join(path, 'checkpoint.pt')}")
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist (expected a training checkpoint, e.g. "
                         f"runs/slimcae/checkpoint.pt)")
    ck = load_torch_file(   # (it refuses a FIFO, which was said not to exist)
        path, "{path} is not a readable checkpoint ({error})")
    if not (isinstance(ck, dict) and all(k in ck for k in ("model", "config", "step"))):
        hint = (" (it is an exported model file already)"
                if isinstance(ck, dict) and ck.get("format") == "slimkernels-model" else "")
        raise ValueError(f"{path} is not a training checkpoint of python/train.py{hint}")
    if not isinstance(ck["config"], dict):
        raise ValueError(f"{path} is a damaged checkpoint: its config is a "
                         f"{type(ck['config']).__name__}, not a dict")
    return ck


def _log_up_to(path: str, step: int):
    """``(last validation record, lambda-update records, bf16)`` of the run's ``log.jsonl`` at
    ``path`` up to the exported checkpoint's ``step``: records written after it (a run killed
    after its last checkpoint, then resumed, logs those steps again) are left out, and of the
    records of one step the last is kept. A line cut short by a crash is skipped. ``bf16``: the
    precision the last ``start`` record says the run resolved (None without one)."""
    if not os.path.exists(path):
        return None, [], None
    vals, updates, bf16 = {}, {}, None
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if not isinstance(r, dict) or not isinstance(r.get("step"), int) or r["step"] > step:
                continue
            if r.get("event") == "val":
                vals[r["step"]] = r
            elif r.get("event") == "lambda_update":
                updates[r["step"]] = r
            elif r.get("event") == "start" and isinstance(r.get("bf16"), bool):
                bf16 = r["bf16"]
    return (vals[max(vals)] if vals else None), [updates[k] for k in sorted(updates)], bf16


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def main(argv=None) -> int:
    """The command line (``argv``: its arguments, default ``sys.argv[1:]``); returns the exit
    code: 0 written, 1 an error (one ``export_model: error:`` line on stderr, nothing
    written)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--force", action="store_true")
    p.add_argument("--raw", action="store_true",
                   help="export the training weights, not their moving average")
    p.add_argument("--schedule-from", default=None, metavar="CHECKPOINT",
                   help="record this checkpoint's lambda schedule state (same lambdas required)")
    p.add_argument("--note", default=None, help="free text stored in the info")
    args = p.parse_args(argv)
    if os.path.isdir(args.output):
        print(f"export_model: error: {args.output} is a folder: give the model file's path, "
              f"e.g. {os.path.join(args.output, 'model.pt')}", file=sys.stderr)
        return 1
    for src in (args.checkpoint, args.schedule_from):
        if src and _same_file(src, args.output):
            print(f"export_model: error: the output {args.output} is the checkpoint {src} "
                  f"itself: exporting over it would replace the run's checkpoint (optimizer "
                  f"state included); give another path", file=sys.stderr)
            return 1
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):   # (before reading the checkpoint)
        print(f"export_model: error: cannot write {args.output}: "
              + (f"{folder} is a file, not a folder" if os.path.exists(folder) else
                 f"the folder {folder} does not exist (create it first)"), file=sys.stderr)
        return 1
    if os.path.lexists(args.output) and not args.force:
        print(f"export_model: error: {args.output} exists: not overwriting it (use --force)",
              file=sys.stderr)
        return 1
    use_ema = False
    try:
        ck = load_checkpoint(args.checkpoint)
        main_ck = load_checkpoint(args.schedule_from) if args.schedule_from else None
        use_ema = ck.get("ema") is not None and not args.raw
        model = load_model(args.checkpoint, weights="ema" if use_ema else "train")  # + tables
    except ValueError as e:
        print(f"export_model: error: {e}", file=sys.stderr)
        return 1
    # (an older trainer's config may lack a field: recorded as None)
    cfg = {k: ck["config"].get(k) for k in ("batch", "crop", "crop_large", "large_after",
                                            "lambdas", "lr", "bf16", "data")}
    weights = f"ema (decay {ck.get('ema_decay')})" if use_ema else "train"
    log = os.path.join(os.path.dirname(args.checkpoint), "log.jsonl")
    val, updates, log_bf16 = _log_up_to(log, ck["step"])
    # the precision the run trained in: the checkpoint's resolved flag, else the log's, else
    # the command line's (None: "auto", resolved by the machine it ran on)
    bf16 = ck.get("bf16") if isinstance(ck.get("bf16"), bool) else \
        log_bf16 if log_bf16 is not None else cfg["bf16"]
    sched = ck.get("scheduler")
    lambda_updates = sched["history"] if isinstance(sched, dict) and \
        isinstance(sched.get("history"), list) else updates
    info = {"steps": ck["step"], "batch": cfg["batch"], "crop": cfg["crop"],
            "crop_large": cfg["crop_large"], "large_after": cfg["large_after"],
            "lambdas_initial": cfg["lambdas"], "lambdas_final": ck.get("lambdas"),
            "lambda_updates": len(lambda_updates), "lr": cfg["lr"], "bf16": bf16,
            "weights": weights,
            "data": os.path.basename(os.path.normpath(cfg["data"]))
            if isinstance(cfg["data"], str) and cfg["data"] else None, "last_validation": val,
            # the lambda schedule's state, so that --init MODEL --init-continue --schedule resumes it
            "scheduler": sched, "next_schedule": ck.get("next_schedule") if sched else None}
    if main_ck is not None:
        if main_ck.get("scheduler") is None:
            print(f"export_model: error: {args.schedule_from} records no lambda schedule "
                  f"(trained without --schedule): nothing to take", file=sys.stderr)
            return 1
        if list(main_ck.get("lambdas") or []) != list(ck.get("lambdas") or []):
            print(f"export_model: error: {args.schedule_from} has lambdas "
                  f"{main_ck.get('lambdas')}, {args.checkpoint} {ck.get('lambdas')}: its schedule "
                  f"state does not describe this model", file=sys.stderr)
            return 1
        info["scheduler"] = main_ck["scheduler"]
        info["next_schedule"] = main_ck.get("next_schedule")
        info["schedule_from"] = {"path": args.schedule_from, "step": main_ck.get("step")}
    if args.note:
        info["note"] = args.note
    try:
        save_model(model, args.output, info=info)
    except OSError as e:
        msg = e.strerror or str(e)   # (slimkernels.io's atomic write names the path already)
        print("export_model: error: " + (msg if msg.startswith("cannot write") else
                                          f"cannot write {args.output}: {msg}"), file=sys.stderr)
        return 1
    except ValueError as e:   # (info the safe loader could not read back: nothing written)
        print(f"export_model: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=1))
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
