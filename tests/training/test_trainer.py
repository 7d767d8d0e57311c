import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from slimkernels.training import TrainConfig, Trainer
from slimkernels.training.trainer import SCHEDULE_START_LAMBDA, ema_decay

from tests._scripts import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        base = rng.integers(0, 255, (1, 1, 3))
        arr = np.clip(base + rng.normal(0, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"im{i}.png")
    return str(d)


def _cfg(image_dir, out, **kw):
    c = dict(data=image_dir, out=str(out), widths=[8, 4], lambdas=[0.01, 0.002], batch=2, crop=32,
             steps=4, val_every=2, val_size=32, val_split=5, bf16=False, progress=False,
             ckpt_every_s=1e9, seed=3)
    c.update(kw)
    return TrainConfig(**c)


def test_training_reduces_loss_and_resumes_exactly(image_dir, tmp_path):
    torch.manual_seed(0)
    t = Trainer(_cfg(image_dir, tmp_path / "a", steps=3), log=lambda *_: None)
    t.load_data()
    x = t.sampler.sample(2, 32)
    first = t.train_step(x)["loss"]
    for _ in range(15):
        last = t.train_step(x)["loss"]
    assert last < first

    # a run of 4 steps equals a run of 2 steps + resume for 2 more
    full = Trainer(_cfg(image_dir, tmp_path / "full"), log=lambda *_: None).fit()
    Trainer(_cfg(image_dir, tmp_path / "split", steps=2), log=lambda *_: None).fit()
    resumed = Trainer(_cfg(image_dir, tmp_path / "split"), log=lambda *_: None)
    assert resumed.step == 2
    resumed.fit()
    assert resumed.step == 4
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    log = [json.loads(l) for l in open(tmp_path / "full" / "log.jsonl")]
    vals = [r for r in log if r["event"] == "val"]
    assert len(vals) == 2 and len(vals[0]["bpp"]) == 2


def test_resume_takes_this_runs_learning_rates(image_dir, tmp_path):
    Trainer(_cfg(image_dir, tmp_path / "r", steps=1), log=lambda *_: None).fit()
    t = Trainer(_cfg(image_dir, tmp_path / "r", steps=2, lr=2e-5, aux_lr=3e-4),
                log=lambda *_: None)
    assert t.step == 1
    assert [g["lr"] for g in t.opt.param_groups] == [2e-5]
    assert [g["lr"] for g in t.aux_opt.param_groups] == [3e-4]
    assert t.opt.state                                 # the moments came back with it
    # the fused implementation (CPU, torch >= 2.4) survives the resume
    assert [g["fused"] for g in t.opt.param_groups + t.aux_opt.param_groups] == [True, True]


def test_make_adam_is_fused_on_cpu_and_falls_back(monkeypatch):
    from slimkernels.training.trainer import make_adam
    p = [torch.nn.Parameter(torch.randn(5))]
    opt = make_adam(p, 1e-3)
    assert opt.defaults["fused"] is True
    p[0].grad = torch.ones(5)
    before = p[0].detach().clone()
    opt.step()
    torch.testing.assert_close(p[0].detach(), before - 1e-3, rtol=0, atol=1e-7)  # Adam's 1st step
    real = torch.optim.Adam

    def no_fused(params, lr, fused=None, foreach=None):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be on a supported device")
        return real(params, lr=lr, foreach=foreach)
    monkeypatch.setattr(torch.optim, "Adam", no_fused)
    opt = make_adam(p, 1e-3)
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]


def test_lambda_scheduling_updates_are_logged(image_dir, tmp_path):
    cfg = _cfg(image_dir, tmp_path / "s", steps=6, schedule=True, schedule_start=2,
               schedule_steps=2, val_every=0)
    t = Trainer(cfg, log=lambda *_: None).fit()
    log = [json.loads(l) for l in open(tmp_path / "s" / "log.jsonl")]
    ups = [r for r in log if r["event"] == "lambda_update"]
    assert ups and ups[0]["lambdas_before"] == [0.01, 0.002]
    assert t.lambdas[0] == 0.01 and t.lambdas[1] < 0.002


def test_init_continue_resumes_the_lambda_schedule(image_dir, tmp_path):
    """A model file whose info carries the scheduler state (python/export_model.py writes it)
    continues the schedule (pair, reductions, reference slope, lambdas, due step) under
    --init-continue --schedule, instead of restarting at the widest pair."""
    from slimkernels.pretrained import save_model
    t = Trainer(_cfg(image_dir, tmp_path / "a", widths=[8, 6, 4], lambdas=[0.01, 0.005, 0.002],
                     steps=4, schedule=True, schedule_steps=2), log=lambda *_: None).fit()
    st = t.scheduler.state_dict()
    assert st["m"] >= 1 or st["i"] >= 1          # the schedule has moved
    path = str(tmp_path / "model.pt")
    t.model.update()
    save_model(t.model, path, info={"steps": t.step, "lambdas_final": t.lambdas,
                                    "scheduler": st, "next_schedule": t.next_schedule})
    cont = Trainer(_cfg(image_dir, tmp_path / "c", widths=[8, 6, 4], lambdas=[0.01, 0.005, 0.002],
                        init=path, init_continue=True, schedule=True, schedule_steps=2, steps=6),
                   log=lambda *_: None)
    cst = cont.scheduler.state_dict()
    for k in ("i", "m", "s_ref", "done", "lambdas"):
        assert cst[k] == st[k], k
    assert cont.lambdas == t.lambdas and cont.next_schedule == max(t.next_schedule, t.step)
    # without a recorded state the schedule starts at the widest pair
    save_model(t.model, path, info={"steps": t.step, "lambdas_final": t.lambdas})
    fresh = Trainer(_cfg(image_dir, tmp_path / "d", widths=[8, 6, 4], lambdas=[0.01, 0.005, 0.002],
                         init=path, init_continue=True, schedule=True), log=lambda *_: None)
    assert fresh.scheduler.i == 0 and fresh.scheduler.m == 0


def test_init_continue_takes_step_and_lambdas_from_exported_model(image_dir, tmp_path):
    from slimkernels.pretrained import save_model
    t = Trainer(_cfg(image_dir, tmp_path / "a", steps=2), log=lambda *_: None).fit()
    path = str(tmp_path / "model.pt")
    t.model.update()
    save_model(t.model, path, info={"steps": 7, "lambdas_final": [0.02, 0.001]})
    # without the flag: weights only, count from 0
    fresh = Trainer(_cfg(image_dir, tmp_path / "b", init=path), log=lambda *_: None)
    assert fresh.step == 0 and fresh.lambdas == [0.01, 0.002]
    cont = Trainer(_cfg(image_dir, tmp_path / "c", init=path, init_continue=True, steps=8),
                   log=lambda *_: None)
    assert cont.step == 7 and cont.lambdas == [0.02, 0.001]
    for k, v in t.model.state_dict().items():
        torch.testing.assert_close(cont.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    cont.fit()
    assert cont.step == 8
    # a bare state_dict records no progress: refused with a message, not silently 0
    torch.save(t.model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="records no step count"):
        Trainer(_cfg(image_dir, tmp_path / "d", init=str(tmp_path / "bare.pt"), init_continue=True))


def test_bf16_training_runs_gdn_through_torch_compile(image_dir, tmp_path, monkeypatch):
    import importlib
    gdn_mod = importlib.import_module("slimkernels.ops.gdn")
    # (where oneDNN has no bf16, no AVX-512, bf16 GDNs run in float32, not the composition)
    monkeypatch.setattr(gdn_mod, "onednn_half", lambda dt: True)
    seen = []
    real = gdn_mod._compiled_composition
    monkeypatch.setattr(gdn_mod, "_compiled_composition", lambda *a: seen.append(1) or real(*a))
    t = Trainer(_cfg(image_dir, tmp_path / "c", bf16=True, steps=2), log=lambda *_: None)
    t.fit()
    assert t.step == 2 and len(seen) >= 4          # every GDN/IGDN of both widths, each step
    assert gdn_mod.COMPILE_TRAINING is False        # only inside the steps
    n = len(seen)
    Trainer(_cfg(image_dir, tmp_path / "d", bf16=True, steps=1, compile_gdn=False),
            log=lambda *_: None).fit()
    assert len(seen) == n                           # --no-compile-gdn: the eager composition


def test_weight_average_is_updated_saved_validated_and_exported(image_dir, tmp_path):
    import subprocess
    from slimkernels.pretrained import load_model
    d = 0.9
    t = Trainer(_cfg(image_dir, tmp_path / "e", steps=1, ema=d), log=lambda *_: None)
    t.load_data()
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    assert all(torch.equal(t.ema[n], before[n]) for n in before)      # starts at the weights
    x = t.sampler.sample(2, 32)
    t.train_step(x)
    d0 = ema_decay(d, 0)                                               # (the warm-up's first)
    assert d0 == pytest.approx(0.1)
    for n, p in t.model.named_parameters():                            # ema = d ema + (1-d) w
        torch.testing.assert_close(t.ema[n], d0 * before[n] + (1 - d0) * p.detach(),
                                   rtol=1e-6, atol=1e-7, msg=n)
    moved = [n for n, p in t.model.named_parameters() if not torch.equal(t.ema[n], p)]
    assert moved
    # validation sees the average; the training weights come back after it
    train_w = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    with t.averaged_weights() as m:
        assert all(torch.equal(p, t.ema[n]) for n, p in m.named_parameters())
    assert all(torch.equal(p, train_w[n]) for n, p in t.model.named_parameters())
    t.run_validation()
    assert all(torch.equal(p, train_w[n]) for n, p in t.model.named_parameters())
    log = [json.loads(l) for l in open(tmp_path / "e" / "log.jsonl")]
    assert log[-1]["event"] == "val" and log[-1]["weights"] == "ema"
    t.save()
    # resume keeps the average; a checkpoint is loaded (and exported) with it by default
    r = Trainer(_cfg(image_dir, tmp_path / "e", steps=2, ema=d), log=lambda *_: None)
    assert all(torch.equal(r.ema[n], t.ema[n]) for n in t.ema)
    ckpt = str(tmp_path / "e" / "checkpoint.pt")
    avg, raw = load_model(ckpt), load_model(ckpt, weights="train")
    for n, p in avg.named_parameters():
        assert torch.equal(p, t.ema[n]), n
    assert any(not torch.equal(p, train_w[n]) for n, p in avg.named_parameters())
    assert all(torch.equal(p, train_w[n]) for n, p in raw.named_parameters())
    out = tmp_path / "m.pt"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "python", "export_model.py"), ckpt,
                          str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    exported = load_model(str(out))
    assert all(torch.equal(p, t.ema[n]) for n, p in exported.named_parameters())
    info = torch.load(out, weights_only=False)["info"]
    assert "ema" in info["weights"]
    # the export records the lambda schedule's state (none here: no --schedule) and due step
    assert "scheduler" in info and info["scheduler"] is None and "next_schedule" in info
    # no schedule ran: no due step (it said 3); the precision the run resolved (it said None)
    assert info["next_schedule"] is None
    assert info["bf16"] is r.bf16 and isinstance(info["bf16"], bool)
    with pytest.raises(ValueError, match="weights must be"):
        load_model(ckpt, weights="best")


def test_export_takes_the_schedule_from_the_main_run(image_dir, tmp_path):
    """A fine-tuning branch (no --schedule) exported with --schedule-from MAIN records the main
    run's schedule state and a note; a main run with other lambdas is refused."""
    main = Trainer(_cfg(image_dir, tmp_path / "main", widths=[8, 6, 4], lambdas=[0.01, 0.005, 0.002],
                        steps=4, schedule=True, schedule_steps=2), log=lambda *_: None).fit()
    branch = tmp_path / "branch"
    branch.mkdir()
    ck = torch.load(tmp_path / "main" / "checkpoint.pt", weights_only=False)
    ck["scheduler"], ck["next_schedule"] = None, None
    torch.save(ck, branch / "checkpoint.pt")
    script = os.path.join(ROOT, "python", "export_model.py")
    out = tmp_path / "m.pt"
    res = subprocess.run([sys.executable, script, str(branch / "checkpoint.pt"), str(out),
                          "--schedule-from", str(tmp_path / "main" / "checkpoint.pt"),
                          "--note", "lr 1e-5 branch"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    info = torch.load(out, weights_only=False)["info"]
    assert info["scheduler"] == main.scheduler.state_dict() and info["note"] == "lr 1e-5 branch"
    assert info["next_schedule"] == main.next_schedule
    ck["lambdas"] = [0.02, 0.005, 0.002]
    torch.save(ck, branch / "checkpoint.pt")
    res = subprocess.run([sys.executable, script, str(branch / "checkpoint.pt"),
                          str(tmp_path / "m2.pt"), "--schedule-from",
                          str(tmp_path / "main" / "checkpoint.pt")], capture_output=True, text=True)
    assert res.returncode == 1 and "does not describe this model" in res.stderr
    assert not (tmp_path / "m2.pt").exists()


def _export_module():
    """python/export_model.py loaded as a module (its main takes argv)."""
    return load_file("python/export_model.py", "export_model")


def test_export_refuses_bad_inputs_with_one_line(tmp_path, capsys):
    export = _export_module()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    model_file = tmp_path / "model.pt"
    from slimkernels.pretrained import save_model
    from slimkernels.models import SlimCAE
    save_model(SlimCAE(widths=(16, 8)), str(model_file))
    cases = [(tmp_path / "missing.pt", "does not exist"), (junk, "not a readable checkpoint"),
             (model_file, "not a training checkpoint .*exported model file already")]
    for src, msg in cases:
        assert export.main([str(src), str(tmp_path / "out.pt")]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(msg, err), err
    assert not (tmp_path / "out.pt").exists()


def test_export_refuses_outputs_it_cannot_or_must_not_write(image_dir, tmp_path, capsys):
    """An output in a missing folder or an existing folder printed a traceback; the
    checkpoint itself as the output (with --force) replaced the run's checkpoint."""
    export = _export_module()
    Trainer(_cfg(image_dir, tmp_path / "run", steps=1), log=lambda *_: None).fit()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    before = ckpt.read_bytes()
    (tmp_path / "folder").mkdir()
    (tmp_path / "taken.pt").write_bytes(b"keep")
    cases = [([str(ckpt), str(tmp_path / "nodir" / "m.pt")],
              r"^export_model: error: cannot write \S*m\.pt: the folder \S*nodir does not exist "
              r"\(create it first\)$"),
             ([str(ckpt), str(tmp_path / "taken.pt")],
              r"^export_model: error: \S*taken\.pt exists: not overwriting it \(use --force\)$"),
             ([str(ckpt), str(tmp_path / "folder"), "--force"], r"folder\S* is a folder"),
             ([str(ckpt), str(ckpt), "--force"], r"is the checkpoint .* itself")]
    for argv, msg in cases:
        assert export.main(argv) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(msg, err), err
    assert ckpt.read_bytes() == before and (tmp_path / "taken.pt").read_bytes() == b"keep"
    assert list((tmp_path / "folder").iterdir()) == []


def test_export_of_odd_checkpoints_and_paths_is_one_line(image_dir, tmp_path, capsys):
    """(A config without a field, or not a dict, gave a KeyError / ValueError traceback; a folder
    as the checkpoint "does not exist"; an output under a file "the folder ... does not exist";
    an unwritable output "cannot write X: cannot write X: ..."; --schedule-from's refusals had
    no "export_model: error:" prefix.)"""
    export = _export_module()
    Trainer(_cfg(image_dir, tmp_path / "run", steps=1), log=lambda *_: None).fit()
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ck = torch.load(ckpt, weights_only=False)
    older = tmp_path / "older.pt"   # (an older trainer's config, without crop_large)
    torch.save({**ck, "config": {k: v for k, v in ck["config"].items() if k != "crop_large"}},
               older)
    bad_cfg = tmp_path / "badcfg.pt"
    torch.save({**ck, "config": "x"}, bad_cfg)
    (tmp_path / "afile").write_bytes(b"")
    cases = [([str(bad_cfg), str(tmp_path / "o1.pt")],
              r"^export_model: error: \S*badcfg\.pt is a damaged checkpoint: its config is a str, "
              r"not a dict$"),
             ([str(tmp_path / "run"), str(tmp_path / "o2.pt")],
              r"^export_model: error: \S*run is a folder: give the checkpoint file in it, e\.g\. "
              r"\S*run/checkpoint\.pt$"),
             ([str(ckpt), str(tmp_path / "afile" / "m.pt")],
              r"^export_model: error: cannot write \S*m\.pt: \S*afile is a file, not a folder$"),
             ([str(ckpt), str(tmp_path / "o3.pt"), "--schedule-from", str(ckpt)],
              r"^export_model: error: \S*checkpoint\.pt records no lambda schedule")]
    for argv, msg in cases:
        assert export.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(msg, err), err
    assert not any((tmp_path / f"o{i}.pt").exists() for i in (1, 2, 3))
    assert export.main([str(older), str(tmp_path / "o4.pt")]) == 0
    info = json.loads(capsys.readouterr().out.rsplit("\nwrote ", 1)[0])
    assert info["crop_large"] is None and info["crop"] == 32
    assert export.main([str(ckpt), "/proc/m.pt"]) == 1   # (a folder nobody can write in)
    err = capsys.readouterr().err
    assert err.count("cannot write /proc/m.pt") == 1 and len(err.strip().splitlines()) == 1, err


def test_ema_off_keeps_no_average(image_dir, tmp_path):
    t = Trainer(_cfg(image_dir, tmp_path / "n", steps=1, ema=0.0), log=lambda *_: None).fit()
    assert t.ema is None
    assert torch.load(tmp_path / "n" / "checkpoint.pt", weights_only=False)["ema"] is None


def test_bad_config_is_refused(image_dir, tmp_path):
    with pytest.raises(ValueError, match="2 widths but 3 lambdas"):
        Trainer(_cfg(image_dir, tmp_path / "x", lambdas=[1, 2, 3]))
    with pytest.raises(ValueError, match="--threads 100000 is more than 8 per CPU"):
        Trainer(_cfg(image_dir, tmp_path / "x", threads=100000))
    from slimkernels.training.cli import run
    with pytest.raises(ValueError, match="the image folder does not exist"):
        run(_cfg(str(tmp_path / "none"), tmp_path / "x"))
    assert not (tmp_path / "x").exists()   # (the run folder was made before the data check)
    with pytest.raises(ValueError, match="does not exist"):
        Trainer(_cfg(str(tmp_path / "nope"), tmp_path / "y")).fit()
    with pytest.raises(ValueError, match="quantization must be one of noise, mixed"):
        Trainer(_cfg(image_dir, tmp_path / "q", quantization="round"))
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("bad,msg", [
    (dict(crop=0), "--crop 0: must be a positive multiple of 16"),
    (dict(crop=40), "--crop 40: must be a positive multiple of 16"),
    (dict(crop_large=7), "--crop-large 7: must be a positive multiple of 16"),
    (dict(val_size=8), "--val-size 8: must be a positive multiple of 16"),
    (dict(batch=0), "--batch 0: must be >= 1"),
    (dict(steps=-1), "--steps -1: must be >= 0"),
    (dict(val_split=1), "--val-split 1: must be >= 2"),
    (dict(schedule_steps=0), "--schedule-steps 0: must be >= 1"),
    (dict(threads=-2), "--threads -2: must be >= 0"),
    (dict(ckpt_every_s=0.0), "--ckpt-every-s 0.0: must be > 0"),
    (dict(lr=0.0), "must be finite and > 0"),
    # (inf was accepted: the aux optimizer wrote NaN quantiles into the checkpoint, exit 0)
    (dict(aux_lr=float("inf")), "--aux-lr inf: must be finite and > 0"),
    (dict(clip=-1.0), "--clip -1.0: must be >= 0"),
    (dict(ema=1.0), r"--ema 1.0: must be in \[0, 1\)"),
    (dict(lambdas=[0.01, -0.1]), "--lambdas .*: must be finite and > 0"),
    (dict(lambdas=[float("inf"), 0.01]), "--lambdas .*: must be finite and > 0"),
    (dict(widths=[8, 0]), "--widths .*: must be positive"),
    # (the lambdas pair with the widths by position; the model sorts its widths)
    (dict(widths=[8, 16]), r"--widths \[8, 16\]: must be distinct and widest first"),
    (dict(widths=[16, 16]), r"--widths \[16, 16\]: must be distinct and widest first"),
    (dict(bf16="no"), "bf16='no': must be True or False"),          # (bool("no") is True)
    (dict(steps=2.5), "--steps 2.5: must be an int"),
])
def test_out_of_range_options_are_refused_before_anything_runs(image_dir, tmp_path, bad, msg):
    with pytest.raises(ValueError, match=msg):
        Trainer(_cfg(image_dir, tmp_path / "run", **bad))
    assert not (tmp_path / "run").exists()


def test_crops_larger_than_every_image_are_refused_at_load(image_dir, tmp_path):
    # the images are 48x64: a 64 crop fits none (sampling would loop forever); a too-large
    # --crop-large is refused at the start when the run reaches --large-after
    with pytest.raises(ValueError, match="no training image is at least 64x64.*48x64"):
        Trainer(_cfg(image_dir, tmp_path / "a", crop=64)).fit()
    with pytest.raises(ValueError, match="no training image is at least 64x64"):
        Trainer(_cfg(image_dir, tmp_path / "b", crop_large=64, large_after=2)).fit()
    t = Trainer(_cfg(image_dir, tmp_path / "c", crop_large=64, steps=1))   # never reached
    t.fit()
    assert t.step == 1


def test_unreadable_checkpoint_or_init_is_refused_and_left_alone(image_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ck = run / "checkpoint.pt"
    ck.write_bytes(b"half-written")
    with pytest.raises(ValueError, match="checkpoint .* is not readable .*move it out"):
        Trainer(_cfg(image_dir, run))
    assert ck.read_bytes() == b"half-written"                   # never overwritten
    torch.save({"state_dict": {}}, ck)                          # e.g. a model file copied there
    with pytest.raises(ValueError, match="is not a checkpoint of this trainer"):
        Trainer(_cfg(image_dir, run))
    with pytest.raises(ValueError, match="--init file .*missing.pt does not exist"):
        Trainer(_cfg(image_dir, tmp_path / "a", init=str(tmp_path / "missing.pt")))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(ValueError, match="--init file .*junk.pt is not readable"):
        Trainer(_cfg(image_dir, tmp_path / "b", init=str(junk)))


@pytest.mark.parametrize("entry", ["script", "slimkernels"])
def test_cli_bad_option_is_one_line_error(image_dir, tmp_path, capsys, entry):
    """python/train.py and `slimkernels train`: a bad option value is a one-line error on stderr
    and exit code 1, not a traceback; nothing is written."""
    if entry == "script":
        from slimkernels.training.cli import main
        argv = []
    else:
        from slimkernels.cli import main
        argv = ["train"]
    out = tmp_path / "bad"
    rc = main(argv + ["--data", image_dir, "--out", str(out), "--crop", "40",
                      "--steps", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "--crop 40: must be a positive multiple of 16" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    try:   # (a value outside an option's choices: argparse's usage error, exit 2; --help lists them)
        rc = main(argv + ["--data", image_dir, "--out", str(out), "--quantization", "round"])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "invalid choice: 'round' (choose from" in err and "Traceback" not in err
    assert not out.exists()


def test_mixed_quantization_trains_and_is_logged(image_dir, tmp_path):
    """--quantization mixed: training runs (finite loss), the start record names it, and the
    training MSE is that of the rounded latents (the model in eval mode at the same weights gives
    the distortion the trainer logged for a fixed batch)."""
    t = Trainer(_cfg(image_dir, tmp_path / "m", steps=2, quantization="mixed"),
                log=lambda *_: None).fit()
    recs = [json.loads(l) for l in open(tmp_path / "m" / "log.jsonl")]
    assert recs[0]["event"] == "start" and recs[0]["quantization"] == "mixed"
    assert t.step == 2 and all(torch.isfinite(p).all() for p in t.model.parameters())
    from slimkernels.training.trainer import rd_loss
    x = t.sampler.sample(2, 32)
    t.model.train()
    _, mixed = rd_loss(t.model, x, t.cfg.widths, t.lambdas, False, "mixed")
    t.model.eval()
    _, rounded = rd_loss(t.model, x, t.cfg.widths, t.lambdas, False)
    assert mixed["mse"] == pytest.approx(rounded["mse"], rel=1e-5)


def test_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step(image_dir, tmp_path):
    """(SIGTERM sent to one torchrun worker stopped that rank alone: it said its checkpoint was
    saved, which only rank 0 writes, and rank 0 died in the next gradient all-reduce: no
    checkpoint, every step lost.) The ranks agree on the stop each step; rank 0 saves."""
    import signal
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + (os.getpid() + 7) % 1000),
           os.path.join(ROOT, "tests", "training", "ddp_signal_worker.py"), image_dir, str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = [json.load(open(out / f"stopped{k}.json")) for k in (0, 1)]
    assert got[0] == got[1] and got[0]["signal"] == signal.SIGTERM, got
    assert 2 <= got[0]["step"] <= 4
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == got[0]["step"]


def test_ddp_two_cpu_processes_keep_replicas_identical(image_dir, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000),
           os.path.join(ROOT, "tests", "training", "ddp_worker.py"), image_dir, str(out)]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    a = torch.load(out / "rank0.pt")
    b = torch.load(out / "rank1.pt")
    assert a.keys() == b.keys()
    # every rank's weight average starts from rank 0's weights (each rank's own random ones
    # before: the ranks' validations differed for the first hundreds of steps)
    e0, e1 = torch.load(out / "ema0.pt"), torch.load(out / "ema1.pt")
    assert e0 is not None and e0.keys() == e1.keys()
    for k in e0:
        torch.testing.assert_close(e0[k], e1[k], rtol=0, atol=0, msg=k)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    init = torch.load(out / "init.pt")
    assert any(not torch.equal(init[k], a[k]) for k in a)    # it did train
    c0, c1 = (torch.load(out / f"resumed_crops{r}.pt") for r in (0, 1))
    assert not torch.equal(c0, c1)                           # resumed ranks draw their own


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_checkpoints_and_stops(image_dir, tmp_path, signame):
    """SIGTERM and SIGHUP (a closed terminal, a dropped ssh session: it ended the run without a
    checkpoint before) finish the step, save and stop; the handlers are put back after."""
    import signal
    import threading
    sig = getattr(signal, signame)

    def unhandled(signum, frame):   # (not the default action: that ended the test process)
        raise AssertionError(f"signal {signum} reached the test's handler: fit did not take it")
    before = signal.signal(sig, unhandled)
    try:
        out = tmp_path / "sig"
        t = Trainer(_cfg(image_dir, out, steps=10 ** 6, val_every=0), log=lambda *_: None)
        t.load_data()
        timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), sig))
        timer.start()
        t.fit()
        timer.join()
        assert 0 < t.step < 10 ** 6 and t.stopped_by == sig
        assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == t.step
        assert signal.getsignal(sig) is unhandled   # (fit put the handler back)
    finally:
        signal.signal(sig, before)


def test_a_signal_ignored_on_purpose_stays_ignored(image_dir, tmp_path):
    """(Under nohup, SIGHUP is ignored; fit installed its handler over that, so a closed
    terminal stopped the run: exit 129.) A signal whose handler is SIG_IGN keeps it."""
    import signal
    import threading
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        seen = []
        t = Trainer(_cfg(image_dir, tmp_path / "sig", steps=4, val_every=0), log=lambda *_: None)
        t.load_data()
        real = t.train_step

        def step(x):   # (the handler in force while the run trains, and a hang-up sent then)
            if not seen:
                seen.append(signal.getsignal(signal.SIGHUP))
                os.kill(os.getpid(), signal.SIGHUP)
            return real(x)
        t.train_step = step
        t.fit()
        assert seen == [signal.SIG_IGN] and t.step == 4 and t.stopped_by is None
        assert threading.current_thread() is threading.main_thread()
    finally:
        signal.signal(signal.SIGHUP, before)


def test_cli_run_survives_a_closed_stdout(image_dir, tmp_path):
    """(`train | head -1`, or Ctrl-C on `train | tee log`, which ends tee: the next line the
    trainer printed raised BrokenPipeError, and the run ended with exit 1; the stop line after
    a signal did too, so 130 / 143 became 1.) The run's lines are dropped once stdout is gone;
    run() finishes and returns its code."""
    import subprocess
    import sys
    code = (
        "import os, sys\n"
        "from slimkernels.training.cli import run\n"
        "from slimkernels.training.trainer import TrainConfig\n"
        "r, w = os.pipe(); os.close(r); os.dup2(w, 1)   # (stdout: a pipe nobody reads)\n"
        f"cfg = TrainConfig(data={image_dir!r}, out={str(tmp_path / 'run')!r}, widths=[8, 4], "
        "lambdas=[0.01, 0.002], steps=2, batch=2, crop=32, val_every=0, val_split=5, "
        "val_size=32, bf16=False, progress=False, threads=1)\n"
        "sys.stderr.write('rc=%d\\n' % run(cfg))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "rc=0" in r.stderr, r.stderr[-2000:]
    assert "BrokenPipe" not in r.stderr
    assert os.path.exists(tmp_path / "run" / "checkpoint.pt")


def test_a_refused_construction_leaves_no_folder_it_made(image_dir, tmp_path):
    """(--out new/a/b with --schedule and one width, or a bad --init: refused after the run
    folder was made, which stayed, with its parents.)"""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    for kw, what in ((dict(widths=[8], lambdas=[0.01], schedule=True), "at least two widths"),
                     (dict(init=str(junk)), "is not readable")):
        with pytest.raises(ValueError, match=what):
            Trainer(_cfg(image_dir, tmp_path / "new" / "a" / "b", **kw), log=lambda *_: None)
        assert not (tmp_path / "new").exists(), kw
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(ValueError):   # (a folder that was there stays)
        Trainer(_cfg(image_dir, kept, init=str(junk)), log=lambda *_: None)
    assert kept.is_dir()


def test_a_resume_keeps_and_saves_the_run_s_own_schedule_start(image_dir, tmp_path):
    """(A resume with a larger --steps and no --schedule-start went on with the first run's
    search start while its saved config said half of the new --steps.)"""
    import signal
    out = tmp_path / "run"
    t = Trainer(_cfg(image_dir, out, steps=40, val_every=0, schedule=True, schedule_steps=1),
                log=lambda *_: None)
    assert t.cfg.schedule_start == 20 == t.next_schedule
    t.load_data()
    real = t.train_step

    def step(x):
        if t.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(x)
    t.train_step = step
    t.fit()
    assert t.stopped_by == signal.SIGTERM and t.step == 2
    r = Trainer(_cfg(image_dir, out, steps=1000, val_every=0, schedule=True, schedule_steps=1),
                log=lambda *_: None)
    assert r.next_schedule == 20 and r.cfg.schedule_start == 20
    r.save()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["config"]["schedule_start"] == 20
    e = Trainer(_cfg(image_dir, out, steps=1000, val_every=0, schedule=True, schedule_steps=1,
                     schedule_start=7), log=lambda *_: None)   # (an explicit one applies)
    assert e.next_schedule == 7 and e.cfg.schedule_start == 7


def test_a_resume_names_the_options_that_differ_from_the_saved_run(image_dir, tmp_path):
    """Options changed on resume were applied (or, --seed, ignored) with only "resumed from
    ...": the resume now lists each one, saved -> now, with what --seed and --ema 0 mean."""
    out = tmp_path / "run"
    Trainer(_cfg(image_dir, out, steps=2, val_every=0), log=lambda *_: None).fit()
    lines = []
    Trainer(_cfg(image_dir, out, steps=4, val_every=0, lr=1e-2, batch=1, seed=5, ema=0.0,
                 threads=1), log=lines.append)
    said = [ln for ln in lines if "differ from the saved run" in str(ln)]
    assert len(said) == 1, lines
    text = str(said[0])
    assert "--lr 0.0001 -> 0.01" in text and "--batch 2 -> 1" in text
    assert "--seed 3 -> 5 (ignored: a resumed run continues its saved random state)" in text
    assert "-> 0.0 (the saved weight average is dropped)" in text
    assert "--threads" not in text and "--steps" not in text   # (this invocation's, not the run's)
    lines.clear()
    Trainer(_cfg(image_dir, out, steps=4, val_every=0), log=lines.append)
    assert not [ln for ln in lines if "differ from the saved run" in str(ln)], lines


def test_out_that_is_the_data_folder_is_refused(image_dir, tmp_path):
    """--out equal to --data (also through a link) is refused before anything is written: the
    run's checkpoint, log and lock went among the training images."""
    before = sorted(os.listdir(image_dir))
    link = tmp_path / "data_link"
    os.symlink(image_dir, link)
    for out in (image_dir, str(link)):
        with pytest.raises(ValueError, match="is the --data folder: give the run a folder"):
            Trainer(_cfg(image_dir, out, steps=2, val_every=0), log=lambda *_: None)
    assert sorted(os.listdir(image_dir)) == before


def test_a_damaged_checkpoint_is_refused_not_resumed(image_dir, tmp_path):
    """A checkpoint with a flipped bit inside a tensor (its archive's CRC-32 fails) is refused
    with the file named and left as it is: it was resumed silently (a weight of 2e35, then 'loss
    is nan ... resume from the last checkpoint', the same file)."""
    from tests._archives import flip_tensor_bit
    out = tmp_path / "run"
    Trainer(_cfg(image_dir, out, steps=2, val_every=0), log=lambda *_: None).fit()
    path = out / "checkpoint.pt"
    b, _ = flip_tensor_bit(path, 3, 0x40)
    path.write_bytes(b)
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint\.pt is damaged: its member "
                                         r".* fails its CRC-32 check"):
        Trainer(_cfg(image_dir, out, steps=4, val_every=0), log=lambda *_: None)
    assert path.read_bytes() == bytes(b)
    with pytest.raises(ValueError, match=r"--init file .* is damaged: its member"):
        Trainer(_cfg(image_dir, tmp_path / "other", steps=4, val_every=0, init=str(path)),
                log=lambda *_: None)


def test_every_option_has_help_and_parses_to_the_config():
    import dataclasses

    from slimkernels.training.cli import build_parser, config_from_args
    from slimkernels.training.trainer import TrainConfig
    text = build_parser().format_help()
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help text"
        assert "--" + f.name.replace("_", "-") in text
    assert "(default: 0.0001)" in text and "(default: 192 144 96 72 48)" in text
    # the defaults of the parser are those of the dataclass
    assert config_from_args(build_parser().parse_args([])) == TrainConfig()
    cfg = config_from_args(build_parser().parse_args(["--widths", "16", "8", "--no-bf16",
                                                      "--lr", "3e-5"]))
    assert cfg.widths == [16, 8] and cfg.bf16 is False and cfg.lr == 3e-5
    # lists with commas too, as the bench tools and eval take them
    cfg = config_from_args(build_parser().parse_args(["--widths", "16,8", "--lambdas",
                                                      "0.01,0.02", "0.04"]))
    assert cfg.widths == [16, 8] and cfg.lambdas == [0.01, 0.02, 0.04]


def test_a_bad_list_item_is_a_usage_error_naming_it(capsys):
    from slimkernels.training.cli import build_parser
    for argv in (["--widths", "16,x"], ["--lambdas", "0.1,"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {argv[0]}: invalid" in err and "spaces or commas" in err


@pytest.mark.parametrize("native", [True, False])
def test_bf16_unset_follows_the_device(image_dir, tmp_path, monkeypatch, native):
    """--bf16 unset: bf16 autocast only where the device computes bf16 natively (emulated bf16 is
    ~10x slower than fp32 on an AVX2 CPU); --bf16 / --no-bf16 override; the choice is logged."""
    import slimkernels.training.trainer as tr
    from slimkernels.training.cli import build_parser, config_from_args
    seen = []
    monkeypatch.setattr(tr, "native_bf16", lambda dev: seen.append(torch.device(dev).type) or native)
    assert build_parser().parse_args([]).bf16 is None
    t = Trainer(_cfg(image_dir, tmp_path / "auto", bf16=None, steps=1, compile_gdn=False),
                log=lambda *_: None)
    assert t.bf16 is native and seen == ["cpu"]
    t.fit()
    start = [json.loads(l) for l in open(tmp_path / "auto" / "log.jsonl")][0]
    assert start["event"] == "start" and start["bf16"] is native
    for forced in (True, False):
        cfg = config_from_args(build_parser().parse_args(["--bf16" if forced else "--no-bf16"]))
        assert cfg.bf16 is forced
        t2 = Trainer(_cfg(image_dir, tmp_path / f"f{forced}{native}", bf16=forced),
                     log=lambda *_: None)
        assert t2.bf16 is forced


def _train_and_compare(image_dir, tmp_path, device, bf16):
    """Train 16 steps on ``device``: the loss falls and every gradient is finite; then the
    trained weights give the same eval-mode forward (median rounding: no noise, so devices
    agree) on ``device`` as on the CPU, to 1e-4 of the image range (fp32; TF32 off on a GPU in
    tests: tests/conftest.py)."""
    torch.manual_seed(0)
    t = Trainer(_cfg(image_dir, tmp_path / "g", device=device, bf16=bf16), log=lambda *_: None)
    t.load_data()
    x = t.sampler.sample(2, 32).to(device)
    first = t.train_step(x)["loss"]
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in t.model.parameters())
    for _ in range(15):
        last = t.train_step(x)["loss"]
    assert last < first
    m = t.model.eval()
    from slimkernels.models import SlimCAE
    c = SlimCAE(m.widths, t.cfg.gdn).eval()
    c.load_state_dict({k: v.cpu() for k, v in m.state_dict().items()})
    with torch.no_grad():
        for w in m.widths:
            a, b = m(x, w), c(x.cpu(), w)
            assert (a["x_hat"].cpu() - b["x_hat"]).abs().max().item() < 1e-4, w


def test_train_and_compare_runs_on_cpu(image_dir, tmp_path):
    """The check below on the CPU (device and reference then run the same code)."""
    _train_and_compare(image_dir, tmp_path, "cpu", False)


@pytest.mark.cuda
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_training_on_cuda_runs_the_triton_kernels(image_dir, tmp_path, bf16):
    """On a GPU the trainer's step runs forward and backward through the Triton kernels."""
    _train_and_compare(image_dir, tmp_path, "cuda", bf16)


def test_non_finite_weights_are_not_saved_over_the_last_checkpoint(image_dir, tmp_path):
    """(A divergence just before a periodic save replaced the good checkpoint with NaN weights;
    resuming then failed every time.)"""
    t = Trainer(_cfg(image_dir, tmp_path / "r", steps=2), log=lambda *_: None)
    t.fit()
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        t.model.entropy_bottleneck.bottlenecks[0].quantiles.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"quantiles is not finite at step 2: not saved "
                                                 r"over the last checkpoint"):
        t.save()
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == good


@pytest.mark.parametrize("change", [dict(widths=[8, 2]), dict(gdn="slim"),
                                    dict(lambdas=[0.5, 0.002])])
def test_resuming_with_other_run_options_is_refused_naming_them(image_dir, tmp_path, change):
    """(Other widths / GDN failed with a kilobytes-long state_dict error; other lambdas were
    silently replaced by the checkpoint's while the checkpoint recorded the new ones.)"""
    Trainer(_cfg(image_dir, tmp_path / "r", steps=1), log=lambda *_: None).fit()
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    key = next(iter(change))
    with pytest.raises(ValueError, match=rf"belongs to a run started with --{key} .*\(now "
                                         rf".*\): resume it with the same options"):
        Trainer(_cfg(image_dir, tmp_path / "r", steps=2, **change), log=lambda *_: None)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("content", [[1, 2], "weights", {"foreign.weight": torch.zeros(2)}])
def test_an_init_file_that_is_not_this_models_weights_is_named(image_dir, tmp_path, content):
    """(A list or string gave a TypeError traceback; a foreign dict a kilobytes-long dump.)"""
    torch.save(content, tmp_path / "init.pt")
    with pytest.raises(ValueError, match=r"--init file .*init.pt (holds a (list|str), not "
                                         r"weights|does not fit this model)"):
        Trainer(_cfg(image_dir, tmp_path / "r", init=str(tmp_path / "init.pt")),
                log=lambda *_: None)


def test_validation_images_that_are_tiny_upscaled_or_shared_are_said(tmp_path):
    """(A validation image under 16 pixels failed inside interpolate; upscaled or shared
    validation images were not mentioned.)"""
    from PIL import Image
    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(d / "a.png")
    said = []
    t = Trainer(_cfg(str(d), tmp_path / "r", val_size=64), log=said.append)
    t.load_data()
    assert any("is also a training image" in s for s in said), said
    assert any("1 validation image(s) smaller than --val-size 64 are upscaled" in s
               for s in said), said
    Image.fromarray(np.zeros((8, 48, 3), np.uint8)).save(d / "b.png")   # the validation one
    with pytest.raises(ValueError, match=r"b.png is 8 pixels on its short side, under 16"):
        Trainer(_cfg(str(d), tmp_path / "s", crop=16, val_size=16, val_split=2),
                log=lambda *_: None).load_data()


def test_cli_exit_code_says_a_signal_stopped_the_run(image_dir, tmp_path):
    """An interrupted run is not a finished one: run() returns 128 + the signal's number (its
    checkpoint saved); a run that reached --steps returns 0."""
    import signal
    import threading

    from slimkernels.training.cli import run
    out = tmp_path / "sig"
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    rc = run(_cfg(image_dir, out, steps=10 ** 6, val_every=0))
    timer.join()
    assert rc == 128 + signal.SIGTERM
    step = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < step < 10 ** 6
    assert run(_cfg(image_dir, tmp_path / "done", steps=2, val_every=0)) == 0


def test_weight_average_warms_up():
    """The average's decay grows from 0.1 to --ema: after 1000 steps at 0.999 a constant decay
    left 37 % of the random initial weights in what validation and the export use."""
    assert [ema_decay(0.999, t) for t in (0, 1, 10, 90)] == pytest.approx(
        [0.1, 2 / 11, 11 / 20, 91 / 100])
    assert ema_decay(0.999, 10 ** 5) == 0.999 and ema_decay(0.5, 10) == 0.5
    left = 1.0
    for t in range(1000):
        left *= ema_decay(0.999, t)
    assert left < 1e-3


def test_scheduler_starts_from_the_lambdas_the_run_trains_with(image_dir, tmp_path):
    """--init --init-continue --schedule from a file without a schedule state: the search starts
    from the file's lambdas (it was built from --lambdas and overwrote them, the widest too)."""
    from slimkernels.pretrained import save_model
    t = Trainer(_cfg(image_dir, tmp_path / "a", lambdas=[0.02, 0.004], steps=1, val_every=0),
                log=lambda *_: None).fit()
    path = str(tmp_path / "model.pt")
    t.model.update()
    save_model(t.model, path, info={"steps": t.step, "lambdas_final": t.lambdas})
    cont = Trainer(_cfg(image_dir, tmp_path / "c", init=path, init_continue=True, schedule=True,
                        schedule_start=2, schedule_steps=1, steps=3, val_every=0),
                   log=lambda *_: None)
    assert cont.lambdas == [0.02, 0.004] and cont.scheduler.lambdas == [0.02, 0.004]
    # (the run's config, which an export's lambdas_initial takes: the defaults it never trained
    # with, 4000 / 255^2 each with --schedule, before)
    assert cont.cfg.lambdas == [0.02, 0.004]
    lines = []
    Trainer(_cfg(image_dir, tmp_path / "d", init=path, init_continue=True, lambdas=[0.5, 0.1],
                 steps=3, val_every=0), log=lines.append)
    assert any("--lambdas [0.5, 0.1] not used: --init-continue takes the file's" in str(ln)
               for ln in lines), lines
    cont.fit()
    assert cont.lambdas[0] == 0.02 and cont.lambdas[1] == pytest.approx(0.004 * 0.8)


def test_resume_without_schedule_keeps_the_schedule_state(image_dir, tmp_path):
    """A resume without --schedule (a fine-tune) keeps the saved search state, so that a later
    resume with --schedule goes on with it (the state was dropped: the search restarted at the
    widest pair from the options' lambdas, raising the narrow ones again)."""
    kw = dict(widths=[8, 6, 4], lambdas=[0.01, 0.005, 0.002], val_every=0, schedule_steps=2)
    a = Trainer(_cfg(image_dir, tmp_path / "r", steps=4, schedule=True, schedule_start=2, **kw),
                log=lambda *_: None).fit()
    st = a.scheduler.state_dict()
    assert st["m"] >= 1
    b = Trainer(_cfg(image_dir, tmp_path / "r", steps=5, schedule=False, **kw),
                log=lambda *_: None).fit()
    assert b.scheduler is None and b.lambdas == a.lambdas
    ck = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert ck["scheduler"] == st
    c = Trainer(_cfg(image_dir, tmp_path / "r", steps=6, schedule=True, **kw),
                log=lambda *_: None)
    cst = c.scheduler.state_dict()
    for k in ("i", "m", "s_ref", "lambdas", "history"):
        assert cst[k] == st[k], k
    assert c.lambdas == a.lambdas


def test_schedule_defaults_follow_the_paper(image_dir, tmp_path):
    """--schedule without --lambdas starts from equal lambdas (4000 on the [0, 1]-MSE scale) and
    takes its first reference slope at half of --steps; without --schedule the predefined
    ladder; a resumed run without --lambdas takes the ones it started with."""
    base = dict(lambdas=None, widths=[8, 6, 4], val_every=0)
    t = Trainer(_cfg(image_dir, tmp_path / "s", schedule=True, steps=8, **base),
                log=lambda *_: None)
    assert t.lambdas == [SCHEDULE_START_LAMBDA] * 3 and t.next_schedule == 4
    assert SCHEDULE_START_LAMBDA == pytest.approx(4000 / 255 ** 2)
    u = Trainer(_cfg(image_dir, tmp_path / "u", steps=1, **base), log=lambda *_: None).fit()
    assert u.lambdas == [0.0315, 0.0157, 0.00787]
    r = Trainer(_cfg(image_dir, tmp_path / "u", steps=2, **base), log=lambda *_: None)
    assert r.lambdas == u.lambdas and r.cfg.lambdas == u.lambdas
    with pytest.raises(ValueError, match="belongs to a run started with --lambdas"):
        Trainer(_cfg(image_dir, tmp_path / "u", steps=2, widths=[8, 6, 4],
                     lambdas=[0.02, 0.01, 0.005]), log=lambda *_: None)


def test_init_continue_needs_init(image_dir, tmp_path):
    with pytest.raises(ValueError, match="--init-continue .* give --init"):
        Trainer(_cfg(image_dir, tmp_path / "x", init_continue=True), log=lambda *_: None)
    assert not (tmp_path / "x").exists()


def test_export_info_ignores_log_records_after_the_checkpoint(image_dir, tmp_path):
    """A run killed after its last checkpoint and resumed logs those steps again: the export's
    last validation and lambda-update count describe the exported checkpoint only."""
    t = Trainer(_cfg(image_dir, tmp_path / "k", widths=[8, 6, 4], lambdas=[0.01, 0.005, 0.002],
                     steps=4, schedule=True, schedule_start=2, schedule_steps=2, val_every=2),
                log=lambda *_: None).fit()
    log = tmp_path / "k" / "log.jsonl"
    with open(log, "a") as f:   # what a killed continuation wrote after step 4, and a cut line
        f.write(json.dumps({"event": "val", "step": 9, "bpp": [1, 1, 1], "psnr": [9, 9, 9]})
                + "\n")
        f.write(json.dumps({"event": "lambda_update", "step": 8, "action": "reduce"}) + "\n")
        f.write('{"event": "val", "st')
    out = tmp_path / "m.pt"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "python", "export_model.py"),
                          str(tmp_path / "k" / "checkpoint.pt"), str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    info = torch.load(out, weights_only=False)["info"]
    assert info["last_validation"]["step"] == 4
    assert info["lambda_updates"] == len(t.scheduler.history) >= 1


def test_a_second_fit_on_the_same_run_folder_is_refused(image_dir, tmp_path):
    """Two trainings on one --out both saved checkpoint.pt (the last save won) and mixed their
    logs: fit() holds the folder's lock, a second one (another process: here a child holding
    it) is refused with the holder's pid, and the lock is free again once fit() returns."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from slimkernels.training.trainer import "
         "_RunLock; l = _RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = Trainer(_cfg(image_dir, out, steps=2, val_every=0), log=lambda *_: None)
        with pytest.raises(ValueError, match=rf"--out {re.escape(str(out))} is in use by another "
                                             rf"training \(pid {holder.pid}\): wait for it"):
            t.fit()
        assert not (out / "checkpoint.pt").exists() and t.step == 0
    finally:
        holder.kill()
        holder.wait()
    t.fit()                                     # the holder is gone: its lock with it
    assert t.step == 2
    t.cfg.steps = 3                             # and the first one can fit again
    t.fit()
    assert t.step == 3
    # released when fit() returns: another Trainer in this process fits on the folder
    r = Trainer(_cfg(image_dir, out, steps=4, val_every=0), log=lambda *_: None)
    assert r.step == 3
    r.fit()
    assert r.step == 4
    # (t fitting again after r had re-trained r's steps from its own older state and replaced
    # r's checkpoint: see test_a_stale_trainer_does_not_overwrite_a_newer_checkpoint)
    t.cfg.steps = 5
    with pytest.raises(ValueError, match="was written by another training since this Trainer"):
        t.fit()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4


def test_out_that_is_a_file_is_refused(image_dir, tmp_path):
    f = tmp_path / "photo.png"
    f.write_bytes(b"not a folder")
    with pytest.raises(ValueError, match=r"--out .*photo.png is a file: --out names the run's "
                                         r"folder"):
        Trainer(_cfg(image_dir, f), log=lambda *_: None)
    assert f.read_bytes() == b"not a folder"


def test_fit_says_where_the_checkpoint_is_and_when_nothing_is_left(image_dir, tmp_path,
                                                                   monkeypatch):
    said = []
    Trainer(_cfg(image_dir, tmp_path / "r", steps=2, val_every=0), log=said.append).fit()
    ckpt = str(tmp_path / "r" / "checkpoint.pt")
    assert said[-1].startswith(f"done: step 2; checkpoint {ckpt} (load_model() reads it")
    # a finished run started again: says so, before reading the training images
    said.clear()
    t = Trainer(_cfg(image_dir, tmp_path / "r", steps=2, val_every=0), log=said.append)
    monkeypatch.setattr(t, "load_data", lambda: pytest.fail("read the images for nothing"))
    mtime = os.stat(ckpt).st_mtime_ns
    assert t.fit() is t and t.stopped_by is None and t.step == 2
    assert said[-1] == (f"the run in {tmp_path / 'r'} is at step 2 already (--steps 2): nothing "
                        f"to train; give a larger --steps to go on")
    assert os.stat(ckpt).st_mtime_ns == mtime   # (not rewritten)


def test_a_file_system_without_locks_trains_with_a_warning(image_dir, tmp_path, monkeypatch):
    """(flock's ENOLCK, as on NFS without lockd, read as "in use by another training".)"""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(fcntl, "flock", no_locks)
    t = Trainer(_cfg(image_dir, tmp_path / "nfs", steps=1, val_every=0), log=lambda *_: None)
    with pytest.warns(RuntimeWarning, match=r"cannot lock the run folder .*nfs \(No locks "
                                            r"available\): a second training on it would not"):
        t.fit()
    assert t.step == 1


def test_config_and_init_mistakes_read_clearly(image_dir, tmp_path):
    """(lr="1e-3" was "TypeError: '<' not supported ..."; data naming a file "does not exist";
    --init with other widths torch's size-mismatch error over every key.)"""
    from slimkernels.models import SlimCAE
    from slimkernels.pretrained import save_model
    from slimkernels.training.cli import run
    with pytest.raises(ValueError, match=r"--lr '1e-3': must be a number"):
        Trainer(_cfg(image_dir, tmp_path / "a", lr="1e-3"), log=lambda *_: None)
    a_file = os.path.join(image_dir, "im0.png")
    with pytest.raises(ValueError, match=r"--data .*im0.png: a file, not a folder of images"):
        run(_cfg(a_file, tmp_path / "b"))
    other = tmp_path / "other.pt"
    save_model(SlimCAE(widths=(12, 4)), str(other))
    with pytest.raises(ValueError, match=r"--init file .*other.pt does not fit this model "
                                         r"\(--widths \[8, 4\].*\): \S+ has shape \(\d+(, \d+)*\), "
                                         r"the model \(\d+(, \d+)*\) \(\d+ entries do not fit\); "
                                         r"the file holds a model of --widths 12 4, --gdn switch: "
                                         r"train with those"):
        Trainer(_cfg(image_dir, tmp_path / "c", init=str(other)), log=lambda *_: None)


def test_numpy_numbers_in_the_config_leave_a_loadable_checkpoint(image_dir, tmp_path):
    """(lr=np.float64(1e-4) or numpy lambdas trained, then load_model and the resume refused the
    checkpoint: the safe loader does not read numpy scalars.)"""
    from slimkernels.pretrained import load_model
    cfg = _cfg(image_dir, tmp_path / "np", steps=1, val_every=0, lr=np.float64(1e-4),
               lambdas=[np.float64(0.01), np.float32(0.002)], batch=np.int64(2))
    t = Trainer(cfg, log=lambda *_: None).fit()
    assert type(t.cfg.lr) is float and type(t.cfg.batch) is int
    assert [type(v) for v in t.cfg.lambdas] == [float, float]
    assert load_model(str(tmp_path / "np" / "checkpoint.pt")).widths == [8, 4]
    assert Trainer(dataclasses.replace(cfg, steps=2), log=lambda *_: None).fit().step == 2
    with pytest.raises(ValueError, match=r"--lambdas \['a', 0.002\]: must be finite and > 0"):
        Trainer(_cfg(image_dir, tmp_path / "x", lambdas=["a", 0.002]), log=lambda *_: None)


def test_validation_without_ema_sees_the_trained_weights(tmp_path):
    """With ema=0 the validation runs the training weights, which the trainer's fused Adam
    updates without bumping their version counters: the second validation had reported the
    metrics of the first one's weights (and fed them to the lambda scheduler)."""
    from slimkernels.models import SlimCAE
    from slimkernels.training.trainer import validate

    cfg = TrainConfig(widths=[48, 16], ema=0.0, out=str(tmp_path / "run"), crop=64, val_size=64,
                      batch=2, progress=False, lr=1e-2, bf16=False, compile_gdn=False)
    t = Trainer(cfg, log=lambda *a, **k: None)
    try:
        assert any(g.get("fused") for g in t.opt.param_groups)   # (what this test is about)
        g = torch.Generator().manual_seed(0)
        t.val_images = torch.rand(2, 3, 64, 64, generator=g)
        t.run_validation()                        # the caches hold the initial weights
        for _ in range(3):
            t.train_step(torch.rand(2, 3, 64, 64, generator=g))
        got = t.run_validation()
        f = SlimCAE([48, 16])
        f.load_state_dict(t.model.state_dict())
        want = validate(f, t.val_images, [48, 16], t.bf16)
    finally:
        t.close()
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-3)


def test_explicit_schedule_start_is_honoured_when_resuming_a_run_trained_without_schedule(
        image_dir, tmp_path):
    """--schedule-start is "first scheduler validation at this step (the search's first
    reference slope)" (TrainConfig help, README). A run trained without --schedule saves
    next_schedule = its own unused default (half of its --steps); resuming it with --schedule
    --schedule-start S ignored S: the first lambda update came at the next step."""
    q = lambda *_: None
    Trainer(_cfg(image_dir, tmp_path / "r", steps=2, batch=1, val_every=0), log=q).fit()   # no --schedule
    t = Trainer(_cfg(image_dir, tmp_path / "r", steps=4, batch=1, val_every=0, schedule=True,
                     schedule_start=6, schedule_steps=1), log=q)
    assert t.next_schedule == 6
    t.fit()
    log = [json.loads(line) for line in open(tmp_path / "r" / "log.jsonl")]
    early = [r["step"] for r in log if r["event"] == "lambda_update"]
    assert early == [] and t.lambdas == [0.01, 0.002]


def test_explicit_schedule_start_is_honoured_when_resuming_a_scheduled_run_before_its_start(
        image_dir, tmp_path):
    """The same when the first run scheduled too but stopped before its own start (its
    scheduler state was saved from step 0, the search not begun)."""
    q = lambda *_: None
    Trainer(_cfg(image_dir, tmp_path / "r", steps=2, batch=1, val_every=0, schedule=True,
                 schedule_start=100), log=q).fit()
    t = Trainer(_cfg(image_dir, tmp_path / "r", steps=3, batch=1, val_every=0, schedule=True,
                     schedule_start=6, schedule_steps=1), log=q)
    assert t.next_schedule == 6
    t.close()


def test_checkpoint_carries_the_weight_averages_tables_and_load_uses_them(image_dir, tmp_path,
                                                                            monkeypatch):
    """load_model built a checkpoint's averaged tables on whatever machine loaded it: their
    counts could differ by one with the CPU's vector unit (AVX2 vs AVX-512), and so the model id,
    and files written on one machine were refused on the other. The trainer now saves them."""
    from slimkernels.models import SlimCAE
    from slimkernels.nn.entropy import EntropyBottleneck
    from slimkernels.pretrained import load_model
    torch.manual_seed(0)
    t = Trainer(_cfg(image_dir, tmp_path / "t", steps=2, ema=0.9), log=lambda *_: None)
    t.fit()
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.save()
    # the model's own buffers as they were (DDP replicas keep buffers of one shape)
    assert all(torch.equal(v, before[k]) for k, v in t.model.state_dict().items())
    ck = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=False)
    # the training weights' own tables are in "model"
    own = SlimCAE([8, 4], t.cfg.gdn)
    own.load_state_dict(ck["model"])
    own.update()
    for k, v in own.state_dict().items():
        if k.rsplit(".", 1)[-1] in ("_quantized_cdf", "_cdf_length", "_offset"):
            assert torch.equal(ck["model"][k], v), k
    tables = ck["ema_tables"]
    assert tables and all(k.startswith("entropy_bottleneck.bottlenecks.") for k in tables)
    assert len(tables) == 3 * len(t.model.entropy_bottleneck.bottlenecks)
    # the tables are those of the average: what update() builds from the averaged weights
    m = SlimCAE([8, 4], t.cfg.gdn)
    m.load_state_dict({**ck["model"], **ck["ema"]})
    m.update()
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in tables.items())
    # load_model takes them as saved (no update() on load)
    def refuse(self, force=True):
        raise AssertionError("update() ran on load")
    monkeypatch.setattr(EntropyBottleneck, "update", refuse)
    loaded = load_model(str(tmp_path / "t" / "checkpoint.pt")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in tables.items())
    monkeypatch.undo()
    # an older checkpoint (no tables saved) still loads: the tables are built on load
    del ck["ema_tables"]
    torch.save(ck, tmp_path / "old.pt")
    old = load_model(str(tmp_path / "old.pt")).state_dict()
    assert all(torch.equal(old[k], v) for k, v in tables.items())


def test_a_checkpoint_whose_tables_cannot_be_built_yet_is_still_saved(image_dir, tmp_path,
                                                                        monkeypatch):
    from slimkernels.nn.entropy import EntropyBottleneck
    t = Trainer(_cfg(image_dir, tmp_path / "u", steps=1, ema=0.9), log=lambda *_: None)

    def implausible(self, force=True):
        raise ValueError("EntropyBottleneck.update: the quantiles are implausible")
    monkeypatch.setattr(EntropyBottleneck, "update", implausible)
    t.save()
    ck = torch.load(tmp_path / "u" / "checkpoint.pt", weights_only=False)
    assert ck["ema_tables"] is None
    assert all(v.numel() == 0 for k, v in ck["model"].items() if k.endswith("_cdf_length"))


def test_a_run_without_weight_average_saves_its_tables(image_dir, tmp_path, monkeypatch):
    """With --ema 0 the checkpoint's tables were built on load (per machine, as the average's
    were): the training weights' tables are saved in the checkpoint's model now."""
    from slimkernels.nn.entropy import EntropyBottleneck
    from slimkernels.pretrained import load_model
    torch.manual_seed(0)
    t = Trainer(_cfg(image_dir, tmp_path / "n", steps=2, ema=0), log=lambda *_: None)
    t.fit()
    ck = torch.load(tmp_path / "n" / "checkpoint.pt", weights_only=False)
    assert ck["ema_tables"] is None
    saved = {k: v for k, v in ck["model"].items() if k.endswith("_cdf_length")}
    assert saved and all(v.numel() > 0 for v in saved.values())

    def refuse(self, force=True):
        raise AssertionError("update() ran on load")
    monkeypatch.setattr(EntropyBottleneck, "update", refuse)
    loaded = load_model(str(tmp_path / "n" / "checkpoint.pt")).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_validation_records_no_gradient(monkeypatch):
    """validate() runs without autograd (a helper inserted above it once took its no_grad
    decorator: validation built graphs over every image)."""
    from slimkernels.models import SlimCAE
    from slimkernels.training.trainer import validate
    model = SlimCAE([8, 4])
    seen = []
    real = SlimCAE.forward

    def spy(self, *a, **k):
        seen.append(torch.is_grad_enabled())
        return real(self, *a, **k)
    monkeypatch.setattr(SlimCAE, "forward", spy)
    validate(model, torch.rand(2, 3, 32, 32), [8, 4], bf16=False)
    assert seen and not any(seen)


@pytest.mark.parametrize("widths,lambdas,msg", [
    ([8, 4], [0.01], r"rd_loss: 1 lambdas for 2 widths: give one lambda per width"),
    ([8, 4], [-0.01, 0.01], r"rd_loss: lambdas \[-0.01, 0.01\] must be finite numbers > 0"),
    ([8, 4], [float("nan"), 0.01], r"rd_loss: lambdas \[nan, 0.01\] must be finite"),
    ([8, 4], ["0.01", 0.01], r"rd_loss: lambdas \['0.01', 0.01\] must be finite"),
    (8, [0.01], r"rd_loss: widths must be a sequence of ints, got 8"),
])
def test_rd_loss_refuses_lambdas_that_do_not_pair_with_the_widths(widths, lambdas, msg):
    """rd_loss zipped the widths with the lambdas: 2 widths and 1 lambda returned the loss of
    the first width alone (the second never trained), a negative lambda gave a loss that
    rewards distortion, a str lambda or a single int width failed inside torch / zip."""
    from slimkernels.models import SlimCAE
    from slimkernels.training import rd_loss
    with pytest.raises(ValueError, match=msg):
        rd_loss(SlimCAE([8, 4]), torch.rand(1, 3, 32, 32), widths, lambdas, False)


def test_rd_loss_refuses_images_it_cannot_train_on():
    """(A 3-D image: "not enough values to unpack (expected 4, got 3)"; a numpy image:
    AttributeError 'new_zeros'; bf16='no': torch's set_autocast_enabled TypeError.)"""
    from slimkernels.models import SlimCAE
    from slimkernels.training import rd_loss
    m = SlimCAE([8, 4])
    with pytest.raises(ValueError, match=r"rd_loss expects a batch of RGB images \[N, 3, H, W\] "
                                         r"float in \[0, 1\], got \(3, 32, 32\)"):
        rd_loss(m, torch.rand(3, 32, 32), [8], [0.01], False)
    with pytest.raises(TypeError, match="rd_loss expects the image as a tensor, got ndarray"):
        rd_loss(m, np.random.rand(1, 3, 32, 32).astype(np.float32), [8], [0.01], False)
    with pytest.raises(ValueError, match=r"rd_loss: bf16='no' must be True or False"):
        rd_loss(m, torch.rand(1, 3, 32, 32), [8], [0.01], "no")
    # numpy numbers and 0-dim tensors are numbers: the loss is the float lambdas' one
    torch.manual_seed(0)
    want, _ = rd_loss(m, torch.full((1, 3, 32, 32), 0.5), [8, 4], [0.01, 0.002], False)
    torch.manual_seed(0)
    got, _ = rd_loss(m, torch.full((1, 3, 32, 32), 0.5), np.array([8, 4]),
                     [np.float64(0.01), torch.tensor(0.002, dtype=torch.float64)], False)
    assert float(got.detach()) == float(want.detach())


@pytest.mark.parametrize("where", ["lambdas", "config"])
@pytest.mark.parametrize("lambdas", [[0.01], [-1.0, 0.002], [float("nan"), 0.002], "ab"])
def test_resume_refuses_checkpoint_lambdas_that_cannot_train(image_dir, tmp_path, where, lambdas):
    """The checkpoint's lambdas were trusted (the count check ran on the options before the
    resume): 1 lambda for 2 widths resumed and trained width 4 with no loss term, [-1.0, 0.002]
    trained with a negative lambda, NaN failed later as "loss is nan: lower the lr"."""
    Trainer(_cfg(image_dir, tmp_path / "r", steps=1, lambdas=None), log=lambda *_: None).fit()
    ck = tmp_path / "r" / "checkpoint.pt"
    c = torch.load(ck, weights_only=False)
    if where == "lambdas":
        c["lambdas"], c["config"]["lambdas"] = lambdas, None
    else:
        c["config"]["lambdas"] = lambdas
    torch.save(c, ck)
    key = "lambdas" if where == "lambdas" else "config's lambdas"
    what = (r"one finite number > 0 per width \(2 widths\)" if lambdas == [0.01] else
            r"finite numbers > 0")   # (values before the run's options, the count after)
    with pytest.raises(ValueError, match=rf"{re.escape(str(ck))} is damaged: its {key} .* are "
                                         rf"not {what}; move it out of the run folder"):
        Trainer(_cfg(image_dir, tmp_path / "r", steps=2, lambdas=None), log=lambda *_: None)


def test_init_continue_refuses_lambdas_that_cannot_train(image_dir, tmp_path):
    """--init-continue checked the count of the init file's lambdas, not their values: a
    negative one trained silently."""
    from slimkernels.models import SlimCAE
    from slimkernels.pretrained import save_model
    m = SlimCAE([8, 4])
    m.update()
    path = str(tmp_path / "model.pt")
    save_model(m, path, info={"steps": 3, "lambdas_final": [-0.01, 0.002]})
    with pytest.raises(ValueError, match=r"model.pt was trained with lambdas \[-0.01, 0.002\], "
                                         r"not one finite number > 0 per width of this run \(2 "
                                         r"widths\): leave out --init-continue"):
        Trainer(_cfg(image_dir, tmp_path / "r", init=path, init_continue=True),
                log=lambda *_: None)


def _first_of(d):
    return next(iter(d))


@pytest.mark.parametrize("edit,kw,msg", [
    (lambda c: c.__setitem__("model", [1]), {}, r"is damaged: its model weights are a list"),
    (lambda c: c["model"].__setitem__(_first_of(c["model"]), "x"), {},
     r"does not fit this model .*: \S+ is a str, not a tensor"),
    (lambda c: c.__setitem__("opt", {"foo": 1}), {},
     r"is damaged: its optimizer state does not fit this model \(no entry 'param_groups'\)"),
    (lambda c: c.__setitem__("aux_opt", "x"), {},
     r"is damaged: its entropy models' optimizer state does not fit this model \(a str"),
    (lambda c: c["opt"]["param_groups"][0].__setitem__("params", [0]), {},
     r"is damaged: its optimizer state does not fit this model \(.*"),
    (lambda c: c["opt"]["state"][0].__setitem__("exp_avg", torch.zeros(1)), {},
     r"is damaged: its optimizer state does not fit this model \(its exp_avg is \(1,\) for a "
     r"parameter of"),
    (lambda c: c.__setitem__("step", "2"), {}, r"is damaged: its step '2' is not an int >= 0"),
    (lambda c: c.__setitem__("sampler", {"foo": 1}), {},
     r"is damaged: its crop sampler state is not one"),
    (lambda c: c.__setitem__("sampler", {"gen": torch.zeros(3, dtype=torch.uint8)}), {},
     r"is damaged: its crop sampler state is not one"),
    (lambda c: c.__setitem__("torch_rng", torch.zeros(3, dtype=torch.uint8)), {},
     r"is damaged: its random number generator state is not one"),
    (lambda c: c.__setitem__("scheduler", "x"), dict(schedule=True),
     r"is damaged: its lambda schedule state is a str, not a dict"),
    (lambda c: c.__setitem__("scheduler", {"i": 7}), {},   # (kept without --schedule too)
     r"is damaged: its lambda schedule state: the state's pair index i 7"),
    (lambda c: c.__setitem__("next_schedule", "soon"), {},
     r"is damaged: its next_schedule 'soon' is not a step"),
    (lambda c: c["ema"].__setitem__(_first_of(c["ema"]), torch.zeros(1)), dict(ema=0.9),
     r": its weight average of \S+ is \(1,\) torch.float32, the weight \(.*\) torch.float32; "
     r"start it afresh with --ema 0 once"),
    (lambda c: c.__setitem__("ema", [1]), dict(ema=0.9),
     r": its weight average does not match this model's parameters"),
])
def test_resume_from_a_damaged_checkpoint_names_it(image_dir, tmp_path, edit, kw, msg):
    """Only the top-level keys of checkpoint.pt were checked: a damaged entry gave an
    AttributeError, KeyError, TypeError or torch RuntimeError (file not named) from inside the
    resume, or, for a weight average of another shape, from the first training step. Now a
    ValueError naming the checkpoint and what to do, before anything trains."""
    Trainer(_cfg(image_dir, tmp_path / "r", steps=1, val_every=0, **kw),
            log=lambda *_: None).fit()
    ck = tmp_path / "r" / "checkpoint.pt"
    c = torch.load(ck, weights_only=False)
    edit(c)
    torch.save(c, ck)
    with pytest.raises(ValueError, match=re.escape(str(ck)) + " ?" + msg):
        Trainer(_cfg(image_dir, tmp_path / "r", steps=2, val_every=0, **kw),
                log=lambda *_: None).fit()


def test_resuming_a_checkpoint_without_config_of_other_widths_names_it(image_dir, tmp_path):
    """(Without a config to compare, torch's load_state_dict RuntimeError listed every key of
    another shape: kilobytes, the file not named.)"""
    Trainer(_cfg(image_dir, tmp_path / "r", steps=1, widths=[8, 2]), log=lambda *_: None).fit()
    ck = tmp_path / "r" / "checkpoint.pt"
    c = torch.load(ck, weights_only=False)
    del c["config"]
    torch.save(c, ck)
    with pytest.raises(ValueError, match=re.escape(str(ck)) + r" does not fit this model "
                                         r"\(--widths \[8, 4\], --gdn switch\): \S+ has shape .*"
                                         r"entries do not fit\); resume it with the options it was "
                                         r"trained with, or move it out") as e:
        Trainer(_cfg(image_dir, tmp_path / "r", steps=2), log=lambda *_: None)
    assert len(str(e.value)) < 400


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_init_or_resumed_weights_are_named(image_dir, tmp_path, value):
    """--init weights holding NaN / inf (or a checkpoint.pt written by hand with them: save()
    refuses them) trained, then failed with "loss is nan at step 0: lower the lr or resume from
    the last checkpoint": neither helps. Now the file and the weight are named up front."""
    from slimkernels.models import SlimCAE
    sd = SlimCAE([8, 4]).state_dict()
    sd["g_a.0.weight"][0] = value
    torch.save(sd, tmp_path / "init.pt")
    with pytest.raises(ValueError, match=r"--init file .*init.pt: its weight g_a.0.weight is not "
                                         r"finite \(NaN or inf; a run that diverged\?\)"):
        Trainer(_cfg(image_dir, tmp_path / "a", init=str(tmp_path / "init.pt")),
                log=lambda *_: None)
    Trainer(_cfg(image_dir, tmp_path / "r", steps=1, ema=0.9), log=lambda *_: None).fit()
    ck = tmp_path / "r" / "checkpoint.pt"
    good = torch.load(ck, weights_only=False)
    for entry, msg in (("model", r" is damaged: its weight g_a.0.weight is not finite"),
                       ("ema", r": its weight average of g_a.0.weight is not finite \(NaN or "
                               r"inf\); start it afresh with --ema 0 once")):
        c = torch.load(ck, weights_only=False)
        c[entry]["g_a.0.weight"][0, 0, 0, 0] = value
        torch.save(c, ck)
        with pytest.raises(ValueError, match=re.escape(str(ck)) + msg):
            Trainer(_cfg(image_dir, tmp_path / "r", steps=2, ema=0.9), log=lambda *_: None)
        torch.save(good, ck)


def test_a_stale_trainer_does_not_overwrite_a_newer_checkpoint(image_dir, tmp_path):
    """The run folder's lock is held only while fit() runs: two Trainers built on one folder at
    step 2, a.fit() to step 4, then b.fit() re-trained steps 2..4 from the state it had read
    and replaced a's checkpoint (a's steps lost). Now fit() (and save()) refuse while
    checkpoint.pt is not the one the Trainer read or last wrote; a new Trainer resumes."""
    out = tmp_path / "r"
    quiet = dict(log=lambda *_: None)
    Trainer(_cfg(image_dir, out, steps=2, val_every=0), **quiet).fit()
    a = Trainer(_cfg(image_dir, out, steps=4, val_every=0), **quiet)
    b = Trainer(_cfg(image_dir, out, steps=4, val_every=0), **quiet)
    a.fit()
    ck = out / "checkpoint.pt"
    newer = ck.read_bytes()
    msg = (rf"{re.escape(str(ck))} was written by another training since this Trainer read or "
           rf"last wrote it \(this one is at step 2\): training on would replace it with older "
           rf"state; build a new Trainer to resume from it")
    with pytest.raises(ValueError, match=msg):
        b.fit()
    with pytest.raises(ValueError, match=msg):
        b.save()
    assert ck.read_bytes() == newer and b.step == 2
    # a new run's Trainer, built before another one wrote the folder's first checkpoint
    c = Trainer(_cfg(image_dir, tmp_path / "n", steps=1, val_every=0), **quiet)
    Trainer(_cfg(image_dir, tmp_path / "n", steps=2, val_every=0), **quiet).fit()
    with pytest.raises(ValueError, match=r"since this Trainer was built \(it started a new "
                                         r"run\)"):
        c.fit()
    # a checkpoint moved away is not in the way; a new Trainer goes on from the newer one
    os.replace(tmp_path / "n" / "checkpoint.pt", tmp_path / "moved.pt")
    assert c.fit().step == 1
    r = Trainer(_cfg(image_dir, out, steps=5, val_every=0), **quiet)
    assert r.step == 4 and r.fit().step == 5


@pytest.mark.parametrize("images,kw,err,msg", [
    (torch.rand(0, 3, 32, 32), {}, ValueError, r"validate: no images \(\[0, 3, H, W\]\)"),
    (torch.rand(2, 3, 32, 32), dict(batch=0), ValueError, r"validate: batch 0 must be an int"),
    (torch.rand(2, 3, 32, 32), dict(batch=-1), ValueError, r"validate: batch -1 must be an int"),
    (np.random.rand(2, 3, 32, 32).astype(np.float32), {}, TypeError,
     r"validate expects the image as a tensor, got ndarray"),
    ([torch.rand(3, 32, 32)], {}, TypeError, r"validate expects the image as a tensor, got list"),
    (torch.rand(3, 32, 32), {}, ValueError, r"validate expects images \[M, 3, H, W\] float in "
                                            r"\[0, 1\], got \(3, 32, 32\)"),
    (torch.rand(2, 3, 32, 32) * 255, {}, ValueError, r"validate expects finite float images in "
                                                     r"\[0, 1\]; their values reach .*\(0-255 "
                                                     r"pixel values\? divide by 255\)"),
    (torch.full((1, 3, 32, 32), float("nan")), {}, ValueError, r"values reach nan"),
])
def test_validate_refuses_images_it_cannot_measure(images, kw, err, msg):
    """(No images: ZeroDivisionError; batch 0: "range() arg 3 must not be zero", -1: a
    ZeroDivisionError; numpy images: AttributeError "'str' object has no attribute 'type'", a
    list: AttributeError 'device'; 0-255 float images: a PSNR of -43 dB without a word.)"""
    from slimkernels.models import SlimCAE
    from slimkernels.training import validate
    with pytest.raises(err, match=msg):
        validate(SlimCAE([8, 4]), images, [8], False, **kw)


def test_config_numpy_widths_and_seed_range(image_dir, tmp_path):
    """(widths=np.array([8, 4]): numpy's "truth value of an array ... is ambiguous" from
    check(); a single number for widths or lambdas: "'int' object is not iterable"; seed=2**70
    passed check(), then torch: "Overflow when unpacking long long".)"""
    t = Trainer(_cfg(image_dir, tmp_path / "a", widths=np.array([8, 4]),
                     lambdas=np.array([0.01, 0.002]), steps=1, val_every=0), log=lambda *_: None)
    assert t.cfg.widths == [8, 4] and t.cfg.lambdas == [0.01, 0.002]
    assert t.fit().step == 1
    with pytest.raises(ValueError, match=r"--widths 8: must be a list \(one entry per width\)"):
        Trainer(_cfg(image_dir, tmp_path / "b", widths=8), log=lambda *_: None)
    with pytest.raises(ValueError, match=r"--lambdas 0.01: must be a list"):
        Trainer(_cfg(image_dir, tmp_path / "b", lambdas=0.01), log=lambda *_: None)
    for seed in (2 ** 70, -2 ** 63 - 1, 2 ** 64):
        with pytest.raises(ValueError, match=rf"--seed {seed} must be an int in -2\^63 .. "
                                             rf"2\^64-1 \(torch's seeds\)"):
            Trainer(_cfg(image_dir, tmp_path / "b", seed=seed), log=lambda *_: None)
    assert not (tmp_path / "b").exists()
    for seed in (2 ** 63, 2 ** 64 - 1):   # (torch's generators take them: the review found
        Trainer(_cfg(image_dir, tmp_path / f"c{seed}", seed=seed),   # 2^63 refused)
                log=lambda *_: None).fit()


def test_run_validation_before_the_data_says_what_to_call(image_dir, tmp_path):
    """(Trainer.run_validation() before fit() / load_data(): TypeError "object of type
    'NoneType' has no len()".)"""
    t = Trainer(_cfg(image_dir, tmp_path / "r"), log=lambda *_: None)
    with pytest.raises(RuntimeError, match=r"run_validation: no validation images yet: call "
                                           r"load_data\(\) \(or fit\(\)\) first"):
        t.run_validation()
    t.load_data()
    assert len(t.run_validation()["bpp"]) == 2


def test_init_continue_past_steps_says_nothing_to_train(image_dir, tmp_path):
    """(train --init MODEL --init-continue with --steps at or below the model's step, e.g. the
    bundled model at 123,269 with the default --steps 1000, trained nothing, wrote a checkpoint
    of the --init weights and printed "done": it says so now, and writes nothing.)"""
    from slimkernels.pretrained import save_model
    t = Trainer(_cfg(image_dir, tmp_path / "a", steps=1), log=lambda *_: None).fit()
    path = str(tmp_path / "model.pt")
    t.model.update()
    save_model(t.model, path, info={"steps": 7, "lambdas_final": [0.02, 0.001]})
    said = []
    out = tmp_path / "c"
    cont = Trainer(_cfg(image_dir, out, init=path, init_continue=True, steps=5),
                   log=said.append).fit()
    assert cont.step == 7 and not (out / "checkpoint.pt").exists()
    assert any(f"--init {path} --init-continue starts at its step 7, which is past --steps 5: "
               f"nothing to train, no checkpoint written; give a --steps above 7 (e.g. --steps "
               f"1007 for 1000 more)" in str(s) for s in said), said


@pytest.mark.parametrize("widths", [[8, 4, 2], [8]])
def test_resume_with_other_widths_names_the_option_not_a_damaged_checkpoint(image_dir, tmp_path,
                                                                            widths):
    """(the checkpoint's lambda count was checked against the new --widths first: a sound
    checkpoint was called damaged, "move it out of the run folder".)"""
    Trainer(_cfg(image_dir, tmp_path / "r", steps=1, val_every=0), log=lambda *_: None).fit()
    with pytest.raises(ValueError) as e:
        Trainer(_cfg(image_dir, tmp_path / "r", widths=widths, lambdas=None), log=lambda *_: None)
    assert "belongs to a run started with --widths [8, 4]" in str(e.value), str(e.value)
    assert "damaged" not in str(e.value)


def test_a_save_by_another_trainer_during_a_fit_does_not_lose_the_fit(image_dir, tmp_path):
    """(save() outside a fit did not take the run lock: another Trainer's save during t1's fit
    went through, and t1's own final save then refused: its steps were lost.) A save() is
    refused while a fit holds the folder."""
    out = tmp_path / "r"
    Trainer(_cfg(image_dir, out, steps=2, val_every=0), log=lambda *_: None).fit()
    t1 = Trainer(_cfg(image_dir, out, steps=4, val_every=0), log=lambda *_: None)
    t2 = Trainer(_cfg(image_dir, out, steps=4, val_every=0), log=lambda *_: None)
    real, seen = t1.train_step, {}

    def step(x):
        if t1.step == 2 and "t2" not in seen:
            try:
                t2.save()
                seen["t2"] = "saved"
            except ValueError as e:
                seen["t2"] = str(e)
        return real(x)
    t1.train_step = step
    t1.fit()
    assert seen["t2"] != "saved", "a save() while another Trainer's fit holds the folder"
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 4


_DDP_CHILD = textwrap.dedent(r'''
    import json, os, shutil, sys, time
    sys.path.insert(0, os.environ["SK_ROOT"])
    import torch, torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from slimkernels.training import TrainConfig, Trainer
    data, out = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(data=data, out=out, widths=[8, 4], lambdas=[0.01, 0.002], batch=2, crop=32,
                      steps=3, val_every=0, val_size=32, val_split=5, bf16=False,
                      progress=False, ckpt_every_s=1e9, seed=3)
    t = Trainer(cfg, log=lambda *_: None)
    dist.barrier()
    ck = os.path.join(out, "checkpoint.pt")
    if rank == 0:   # another training writes the checkpoint after these Trainers read it
        shutil.copy(ck, ck + ".new"); os.replace(ck + ".new", ck)
    dist.barrier()
    t0 = time.time()
    try:
        t.fit(); res = {"ok": True}
    except BaseException as e:
        res = {"ok": False, "type": type(e).__name__, "msg": str(e)[:300]}
    res.update(rank=rank, s=round(time.time() - t0, 1))
    print("RESULT " + json.dumps(res), flush=True)
    if rank == 0:
        time.sleep(8)   # (a caller that handles the error and goes on: the process lives)
    os._exit(0)
''')


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_a_stale_checkpoint_refusal_reaches_every_rank(image_dir, tmp_path):
    """(rank 0 alone refused a checkpoint written since the Trainers read it: the other ranks
    went on into training and waited in DDP's first collective until rank 0's process ended.)"""
    out = tmp_path / "r"
    Trainer(_cfg(image_dir, out, steps=1, val_every=0), log=lambda *_: None).fit()
    child = tmp_path / "child.py"
    child.write_text(_DDP_CHILD)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), SK_ROOT=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), PYTHONDONTWRITEBYTECODE="1")
        procs.append(subprocess.Popen([sys.executable, str(child), image_dir, str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    res = []
    for p in procs:
        o, _ = p.communicate(timeout=300)
        line = [ln for ln in o.splitlines() if ln.startswith("RESULT ")]
        assert line, o[-2000:]
        res.append(json.loads(line[0][7:]))
    for r in res:
        assert not r["ok"] and r["type"] == "ValueError" and \
            "was written by another training" in r["msg"], res
        assert r["s"] < 5, res   # (not after waiting for rank 0's process to end)


def test_a_checkpoint_replaced_from_outside_the_lock_during_a_fit_keeps_both(image_dir, tmp_path):
    """A checkpoint.pt written around the lock while a fit runs (a copy over it) is neither
    overwritten nor a reason to drop the fit's steps (or, under torchrun, to raise on rank 0
    alone): the fit saves to checkpoint.conflict-<pid>.pt and says so."""
    import shutil
    out = tmp_path / "r"
    Trainer(_cfg(image_dir, out, steps=2, val_every=0), log=lambda *_: None).fit()
    ck = out / "checkpoint.pt"
    said = []
    t = Trainer(_cfg(image_dir, out, steps=4, val_every=0), log=said.append)
    real = t.train_step

    def step(x):
        if t.step == 3 and not (out / "foreign.pt").exists():
            shutil.copy(ck, out / "foreign.pt")
            os.replace(shutil.copy(ck, out / "tmp.pt"), ck)   # (a new file: another stamp)
        return real(x)
    t.train_step = step
    t.fit()
    side = out / f"checkpoint.conflict-{os.getpid()}.pt"
    assert torch.load(side, weights_only=False)["step"] == 4
    assert torch.load(ck, weights_only=False)["step"] == 2          # (the foreign one, kept)
    assert sum(f"this run's checkpoints go to {side} instead" in str(s) for s in said) == 1


def test_init_that_a_resume_would_ignore_is_refused(image_dir, tmp_path):
    """(--out holding a run's checkpoint resumed it and ignored --init silently: a user who meant
    to start from a model trained on another run.) The run's own command, --init included,
    still resumes it."""
    from slimkernels.pretrained import save_model
    quiet = {"log": lambda *_: None}
    t = Trainer(_cfg(image_dir, tmp_path / "src", steps=1, val_every=0), **quiet).fit()
    t.model.update()
    model_a, model_b = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    save_model(t.model, model_a)
    save_model(t.model, model_b)
    fresh = tmp_path / "fresh"   # a run that started from new weights
    Trainer(_cfg(image_dir, fresh, steps=1, val_every=0), **quiet).fit()
    before = (fresh / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=r"holds the checkpoint of a run \(step 1, .*\) that did "
                                         r"not start from a file: resuming it would ignore --init "
                                         r".*a\.pt\. Leave out --init to resume that run, or "
                                         r"choose another --out"):
        Trainer(_cfg(image_dir, fresh, steps=2, val_every=0, init=model_a), **quiet)
    assert (fresh / "checkpoint.pt").read_bytes() == before
    run = tmp_path / "from_a"   # a run that started from a.pt
    Trainer(_cfg(image_dir, run, steps=1, val_every=0, init=model_a), **quiet).fit()
    with pytest.raises(ValueError, match=r"that started from .*a\.pt: resuming it would ignore "
                                         r"--init .*b\.pt"):
        Trainer(_cfg(image_dir, run, steps=2, val_every=0, init=model_b), **quiet)
    again = Trainer(_cfg(image_dir, run, steps=2, val_every=0, init=model_a), **quiet)
    assert again.step == 1   # (the same command: resumed)
    assert again.fit().step == 2


def test_a_fit_that_fails_before_writing_removes_the_folder_it_made(tmp_path):
    """(A run on an empty image folder, or one with an unreadable image, left its --out folder
    behind with only the lock file in it.) A folder that existed before, or that holds
    anything else, stays."""
    empty = tmp_path / "empty"
    empty.mkdir()
    quiet = {"log": lambda *_: None}
    out = tmp_path / "new" / "run"
    (tmp_path / "new").mkdir()
    with pytest.raises(ValueError, match="no images"):
        Trainer(_cfg(str(empty), out), **quiet).fit()
    assert not out.exists() and (tmp_path / "new").exists()
    mine = tmp_path / "mine"   # (made by the user before the run: kept, as it was)
    mine.mkdir()
    with pytest.raises(ValueError, match="no images"):
        Trainer(_cfg(str(empty), mine), **quiet).fit()
    assert mine.is_dir()
    t = Trainer(_cfg(str(empty), tmp_path / "other"), **quiet)
    (tmp_path / "other" / "notes.txt").write_text("keep")   # (written there meanwhile)
    with pytest.raises(ValueError, match="no images"):
        t.fit()
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep"
    deep = tmp_path / "p1" / "p2" / "run"   # (the missing parents it made go too)
    with pytest.raises(ValueError, match="no images"):
        Trainer(_cfg(str(empty), deep), **quiet).fit()
    assert not (tmp_path / "p1").exists()


def test_an_out_that_cannot_be_made_or_lambdas_of_another_count_name_the_options(image_dir,
                                                                                   tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match=r"--out \S*afile/run: cannot make the run folder \(.*\); "
                                         r"give another path"):
        Trainer(_cfg(image_dir, tmp_path / "afile" / "run"))
    with pytest.raises(ValueError, match=r"2 widths but 1 lambdas \(--widths 8 4, --lambdas 0\.01\)"
                                         r": give one lambda per width"):
        Trainer(_cfg(image_dir, tmp_path / "r", lambdas=[0.01]))


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
@pytest.mark.parametrize("name,value", [("WORLD_SIZE", "abc"), ("WORLD_SIZE", ""),
                                        ("WORLD_SIZE", "0")])
def test_a_bad_torchrun_variable_is_named(tmp_path, monkeypatch, capsys, name, value):
    """(WORLD_SIZE=abc printed "train: error: invalid literal for int() with base 10: 'abc'".)"""
    from slimkernels.training import cli
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv(name, value)
    assert cli.main(["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert f"${name}={value!r} must be an integer >= 1" in err
    assert not (tmp_path / "run").exists()
