"""slimkernels.pretrained: model files are read without running code, and damaged ones are
named."""
import copy
import re

import pytest
import torch

from slimkernels.pretrained import bundled_model_path, load_model, model_info


class _RunsCode:
    """Unpickling it would call ``open(path, "w")``: the file appearing means code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def bundled():
    path = bundled_model_path()
    if path is None:
        pytest.skip("no bundled model")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("reader", [load_model, model_info])
def test_a_model_file_cannot_run_code_while_it_loads(tmp_path, reader):
    marker = tmp_path / "ran"
    torch.save({"format": "slimkernels-model", "info": _RunsCode(str(marker))},
               tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="is not a readable model file"):
        reader(str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_a_fifo_as_model_file_is_refused_not_waited_on(tmp_path):
    """A FIFO passed as the model file (``--model fifo``) is refused at once: reading it blocked
    until something wrote into it (a child process, so that a regression fails by its timeout
    instead of hanging the tests)."""
    import os
    import subprocess
    import sys
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    code = ("from slimkernels.pretrained import load_model\n"
            "try:\n    load_model(%r)\nexcept ValueError as e:\n    print(e)\n" % str(fifo))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "is not a regular file (a pipe, a socket or a device)" in r.stdout


@pytest.mark.parametrize("damage,what", [
    (lambda d: d.pop("state_dict"), "KeyError: 'state_dict'"),
    (lambda d: d.__setitem__("config", "widths=192"), "must be dicts"),
    (lambda d: d["config"].__setitem__("unknown", 1), "unexpected keyword argument 'unknown'"),
])
def test_a_damaged_model_file_is_named(tmp_path, bundled, damage, what):
    d = copy.deepcopy(bundled)
    damage(d)
    torch.save(d, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=f"bad.pt is a damaged slimkernels model file .*{what}"):
        load_model(str(tmp_path / "bad.pt"))


def test_the_bundled_model_and_its_info_load_as_plain_data(bundled):
    assert bundled["format"] == "slimkernels-model"
    assert model_info() == dict(bundled.get("info", {}))
    assert load_model().widths == sorted(bundled["config"]["widths"], reverse=True)


def test_a_state_dict_that_does_not_match_its_config_is_named_briefly(tmp_path, bundled):
    d = copy.deepcopy(bundled)
    d["state_dict"] = {k: v for i, (k, v) in enumerate(d["state_dict"].items()) if i % 2}
    d["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(d, tmp_path / "half.pt")
    with pytest.raises(ValueError, match=r"half.pt does not match the model its config describes"
                                         r" \(\d+ missing key\(s\) .*1 unexpected") as e:
        load_model(str(tmp_path / "half.pt"))
    assert len(str(e.value)) < 600   # (torch's own error lists every key: kilobytes)


@pytest.mark.parametrize("h, w", [(256, 16), (16, 256)])
def test_thin_images_code_as_well_in_the_default_precision_as_in_fp32(h, w):
    """A 16-pixel-wide image put enc3's output one column wide, where torch's oneDNN bf16 conv
    returns garbage: the bundled model's default (bf16 on AMX / AVX512-BF16 CPUs) decoded it at
    13.5 dB against 33.1 dB in fp32."""
    from slimkernels.evaluation.metrics import psnr
    model = load_model()
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=g)   # a smooth image
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear",
                                        align_corners=False).clamp(0, 1)
    ref = psnr(model.decompress(model.compress(x, 192, precision="fp32"), precision="fp32"), x)
    got = psnr(model.decompress(model.compress(x, 192)), x)
    assert float(ref) > 25 and abs(float(got) - float(ref)) < 0.1


def test_model_info_of_a_missing_file_is_a_clear_error(tmp_path):
    """(a bare FileNotFoundError from torch.load, unlike load_model's message.)"""
    from slimkernels.pretrained import model_info
    with pytest.raises(ValueError, match="does not exist or is not a file"):
        model_info(str(tmp_path / "none.pt"))


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_the_bytes_do_not_depend_on_the_thread_count(precision):
    """With streams=1 the file is the same whatever torch's thread count: the first layer's route
    at w=192 / 96 once depended on it (oneDNN on one thread, the direct AMX kernel on two), and
    the two round bf16 differently (the sample image at w=192: other bytes from byte 40)."""
    import os

    from slimkernels.io import read_image
    if bundled_model_path() is None:
        pytest.skip("no bundled model")
    model = load_model()
    x, _ = read_image(os.path.join(os.path.dirname(bundled_model_path()), "..", "assets",
                                   "sample.png"))
    nt = torch.get_num_threads()
    try:
        out = {}
        for t in (1, 2):
            torch.set_num_threads(t)
            out[t] = [model.compress(x, w, precision=precision, streams=1)
                      for w in model.widths]
    finally:
        torch.set_num_threads(nt)
    assert out[1] == out[2]


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_a_forged_latent_that_decodes_to_nan_is_a_format_error(precision):
    """A file with valid checksums, this model's id and a valid coder stream whose symbols are
    all 100000 (escapes: compress never writes such a latent) drove the synthesis transform to
    inf and returned an all-NaN image (the CLI wrote a black PNG). It is a SlimFormatError now;
    symbols a little beyond the tables' range (escapes too) still decode to an image."""
    import dataclasses

    import numpy as np

    from slimkernels import coding, container
    if bundled_model_path() is None:
        pytest.skip("no bundled model")
    model = load_model()
    f = container.unpack(model.compress(torch.rand(1, 3, 20, 30), 48))
    eb = model.entropy_bottleneck.for_width(48)
    _, cdfs, lengths, offsets, idx = model._latent_plan(eb, 48)

    def with_symbols(v):
        sym = np.full((1, 48, 2, 2), v, np.int32)
        payload = coding.encode(sym, idx, cdfs, lengths, offsets, precision=eb.precision)
        return container.pack(dataclasses.replace(f, payload=payload))

    with pytest.raises(container.SlimFormatError, match="beyond the entropy model's range"):
        model.decompress(with_symbols(100000), precision=precision)
    reach = int(max(np.abs(offsets).max(), np.abs(offsets + lengths - 3).max()))
    y = model.decompress(with_symbols(reach + 8), precision=precision)
    assert y.shape == (1, 3, 20, 30) and bool(torch.isfinite(y).all())
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_save_model_refuses_info_that_would_not_load(tmp_path):
    """(A numpy number in info was written, replacing a good file, and load_model then refused
    the file: "Unsupported global: numpy._core.multiarray.scalar".)"""
    import pathlib

    import numpy as np

    from slimkernels.models import SlimCAE
    from slimkernels.pretrained import save_model
    m = SlimCAE(widths=(16, 8)).eval()
    path = tmp_path / "m.pt"
    fine = {"psnr": 30.1, "runs": [{"w": 8, "ok": True}], "n": None, 192: {"bpp": 0.9},
            "t": torch.tensor(1.5), "pair": (1, 2.0), "b": b"x"}   # (what the loader reads)
    save_model(m, str(path), info=fine)
    good = path.read_bytes()
    from slimkernels.pretrained import model_info
    assert model_info(str(path))[192] == {"bpp": 0.9}
    for info, where, what in (({"psnr": np.float64(30.1)}, "info['psnr']", "numpy.float64"),
                              ({"a": [1, {"p": pathlib.Path("x")}]}, "info['a'][1]['p']",
                               "pathlib.PosixPath")):
        with pytest.raises(ValueError, match=rf"^{re.escape(where)} is a {re.escape(what)}, "
                                             r"which load_model's safe loader cannot read"):
            save_model(m, str(path), info=info)
        assert path.read_bytes() == good
    assert load_model(str(path)).widths == [16, 8]


def test_save_model_refuses_other_models(tmp_path):
    """(A custom SlimCodec was saved, and load_model then called it a damaged file.)"""
    from slimkernels.pretrained import save_model
    with pytest.raises(TypeError, match="save_model writes a SlimCAE .* got Linear: save your "
                                        "own model's state_dict with torch.save"):
        save_model(torch.nn.Linear(2, 2), str(tmp_path / "m.pt"))
    assert not (tmp_path / "m.pt").exists()


_CHECKPOINT_ID = r"""
import json, sys, torch
from slimkernels.pretrained import load_model
m = load_model(sys.argv[1])
print(json.dumps({"cap": str(torch.backends.cpu.get_cpu_capability()), "id": m.model_id().hex()}))
"""


def test_a_trainer_checkpoint_has_one_model_id_on_avx2_and_avx512(tmp_path):
    """The same checkpoint loaded where torch runs its AVX2 kernels (an AVX2-only CPU) and its
    AVX-512 ones: the tables of the weight average were built on load, their float arithmetic
    differing in the last bits, and for this perturbation (one of 7 in 300 an audit found) one
    count differed: another model id, files written on one machine refused on the other. The
    trainer's checkpoints now carry the average's tables (``ema_tables``)."""
    import json
    import os
    import subprocess
    import sys

    if str(torch.backends.cpu.get_cpu_capability()) != "AVX512":
        pytest.skip("needs a CPU where torch runs its AVX-512 kernels (to compare with AVX2)")
    m = load_model()
    g = torch.Generator().manual_seed(21)
    ema = {}
    for n, p in m.named_parameters():   # another run's average, as it were
        p = p.detach().clone()
        if n.startswith("entropy_bottleneck."):
            p = p + 1e-3 * torch.randn(p.shape, generator=g) * (p.abs() + 1e-2)
        ema[n] = p
    avg = copy.deepcopy(m)
    avg.load_state_dict({**m.state_dict(), **ema})
    avg.update()
    tables = {k: v for k, v in avg.state_dict().items()
              if k.rsplit(".", 1)[-1] in ("_quantized_cdf", "_cdf_length", "_offset")}
    ck = tmp_path / "checkpoint.pt"
    torch.save({"model": m.state_dict(), "config": {"widths": list(m.widths), "gdn": "switch"},
                "step": 0, "ema": ema, "ema_tables": tables}, ck)
    ids = {}
    for cap in ("avx512", "avx2"):
        r = subprocess.run([sys.executable, "-c", _CHECKPOINT_ID, str(ck)], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, ATEN_CPU_CAPABILITY=cap))
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["cap"] == cap.upper()
        ids[cap] = res["id"]
    assert ids["avx512"] == ids["avx2"] == avg.model_id().hex()


@pytest.fixture(scope="module")
def small_model():
    """A 2-width model with its CDF tables (damaged copies of its file are made)."""
    from slimkernels.models import SlimCAE
    m = SlimCAE(widths=(16, 8)).eval()
    m.update()
    return m


def _damaged(tmp_path, model, edit, name="m.pt"):
    """``model`` saved with save_model, its dict edited by ``edit`` and saved again."""
    from slimkernels.pretrained import save_model
    f = tmp_path / name
    save_model(model, str(f))
    d = torch.load(f, weights_only=True)
    edit(d)
    torch.save(d, f)
    return str(f)


def _table_key(d, end, i=0):
    return [k for k in d["state_dict"] if k.endswith(end)][i]


@pytest.mark.parametrize("edit,what", [
    # config widths that do not fit the tensors: torch's load_state_dict RuntimeError, listing
    # every mismatched key (kilobytes), though a damaged file was promised to be a ValueError
    (lambda d: d["config"].__setitem__("widths", [16, 4]),
     r"does not match the model its config describes \(.* has shape \(8,\), the model "
     r"\(4,\) \(\d+ entries do not fit\)\)"),
    # an entry that is not a tensor: torch's RuntimeError or, for a table, AttributeError
    # "'list' object has no attribute 'detach'"
    (lambda d: d["state_dict"].__setitem__("g_a.0.weight", [0.0] * 4),
     r"g_a.0.weight is a list, not a tensor"),
    (lambda d: d["state_dict"].__setitem__(_table_key(d, "_offset"), [0] * 16),
     r"_offset is a list, not a tensor"),
    # bad config widths / gdn: SlimCAE's ValueError, without the file's name
    (lambda d: d["config"].__setitem__("widths", [0]),
     r"is a damaged slimkernels model file \(ValueError: widths must be"),
    (lambda d: d["config"].__setitem__("gdn", "nope"),
     r"is a damaged slimkernels model file \(ValueError: unknown GDN variant 'nope'"),
    # damaged CDF tables loaded, and compress failed with the coder's message ("offsets must
    # be 1-D with cdfs.shape[0] = 16 entries"), the file not named
    (lambda d: d["state_dict"].__setitem__(_table_key(d, "_offset"),
                                           torch.zeros(3, dtype=torch.int32)),
     r"_offset have shapes \(16, \d+\) / \(16,\) / \(3,\), not \[16, L\] / \[16\] / \[16\] "
     r"for this model's 16 channels"),
], ids=["widths-of-other-shapes", "weight-not-a-tensor", "table-not-a-tensor",
         "bad-config-widths", "bad-config-gdn", "offset-table-of-3"])
def test_a_damaged_model_file_is_a_value_error_naming_it(tmp_path, small_model, edit, what):
    path = _damaged(tmp_path, small_model, edit)
    with pytest.raises(ValueError, match=rf"^{re.escape(path)} .*{what}") as e:
        load_model(path)
    assert len(str(e.value)) < 600


def test_a_checkpoint_with_damaged_weight_average_is_named(tmp_path, small_model):
    """A training checkpoint whose ``ema`` holds a tensor of another shape (torch's
    RuntimeError listing keys) or whose ``ema_tables`` hold a CDF length of 0 (loaded: compress
    then failed with the coder's message)."""
    m = small_model
    sd = m.state_dict()
    base = {"model": sd, "config": {"widths": [16, 8], "gdn": "switch"}, "step": 1}
    ck = tmp_path / "checkpoint.pt"
    torch.save({**base, "ema": {"g_a.0.weight": torch.zeros(3, 3)}}, ck)
    with pytest.raises(ValueError, match=r"checkpoint.pt does not match the model its config "
                                         r"describes \(g_a.0.weight has shape \(3, 3\)"):
        load_model(str(ck))
    tables = {k: v.clone() for k, v in sd.items()
              if k.rsplit(".", 1)[-1] in ("_quantized_cdf", "_cdf_length", "_offset")}
    tables[[k for k in tables if k.endswith("_cdf_length")][1]][0] = 0
    ema = {k: v for k, v in m.named_parameters()}
    torch.save({**base, "ema": ema, "ema_tables": tables}, ck)
    with pytest.raises(ValueError, match=r"checkpoint.pt is a damaged slimkernels model file "
                                         r"\(entropy_bottleneck.bottlenecks.1._quantized_cdf: the "
                                         r"CDF tables are not valid at this model's precision "
                                         r"16 \(cdf_lengths\[0\] = 0"):
        load_model(str(ck))
    torch.save({**base, "ema": ema, "ema_tables": {k: v.clone() for k, v in sd.items()
                                                   if k in tables}}, ck)
    assert load_model(str(ck)).model_id() == m.model_id()   # (the undamaged one loads)


def test_model_info_of_a_file_whose_info_is_not_a_dict(tmp_path):
    """(model_info raised dict()'s TypeError "cannot convert dictionary update sequence
    element #0 to a sequence".)"""
    torch.save({"format": "slimkernels-model", "info": [1, 2]}, tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"m.pt is a damaged slimkernels model file: its info "
                                         r"is a list, not a dict"):
        model_info(str(tmp_path / "m.pt"))


def test_load_model_builds_float32_whatever_the_default_dtype(tmp_path, small_model):
    """(under torch.set_default_dtype(torch.float64) the model was built in float64 and the file's
    float32 weights copied into it: it refused to compress, "weights in float32".)"""
    from slimkernels.pretrained import save_model
    m = small_model
    path = str(tmp_path / "m.pt")
    save_model(m, path)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = load_model(path)
    finally:
        torch.set_default_dtype(old)
    assert all(p.dtype == torch.float32 for p in got.parameters())
    x = torch.rand(1, 3, 32, 32)
    assert got.compress(x, 8) == m.compress(x, 8)


def test_a_model_with_a_compiled_submodule_saves_a_file_that_loads(tmp_path, small_model):
    """(save_model wrote torch.compile's 'g_s._orig_mod.*' keys: a file load_model refused as
    damaged, the saved model lost.)"""
    from slimkernels.pretrained import save_model
    m = copy.deepcopy(small_model)
    mid = m.model_id()
    m.g_s = torch.compile(m.g_s)
    save_model(m, str(tmp_path / "c.pt"))
    assert load_model(str(tmp_path / "c.pt")).model_id() == mid


@pytest.mark.parametrize("widths", [[1500], [10 ** 9], list(range(1, 4000))])
def test_a_forged_config_is_refused_before_its_model_is_built(tmp_path, small_model, widths,
                                                              monkeypatch):
    """(widths [1500] in a 181 KB file built a 1.4 GB model before the weights were checked;
    [10**9] failed in torch's allocator.)"""
    from slimkernels import pretrained
    from slimkernels.pretrained import save_model
    save_model(small_model, str(tmp_path / "m.pt"))
    d = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**d, "config": {"widths": widths, "gdn": "switch"}}, tmp_path / "bad.pt")
    monkeypatch.setattr(pretrained, "SlimCAE", lambda **k: pytest.fail("built"))
    with pytest.raises(ValueError, match=r"bad\.pt is a damaged slimkernels model file .*its "
                                         r"config describes widths .* but it holds \d+ values"):
        load_model(str(tmp_path / "bad.pt"))


def test_a_flipped_bit_in_a_model_file_is_named(tmp_path, small_model):
    """(torch's reader does not check the archive's CRC-32s: a flipped bit in a weight loaded,
    and the original model's files were then refused as written by another model.)"""
    from slimkernels.pretrained import save_model
    from tests._archives import flip_tensor_bit
    path = tmp_path / "m.pt"
    save_model(small_model, str(path))
    b, member = flip_tensor_bit(path, 17, 0x10)
    (tmp_path / "flip.pt").write_bytes(b)
    with pytest.raises(ValueError, match=rf"flip\.pt is a damaged model file: its member "
                                         rf"{re.escape(member.filename)} fails its CRC-32 check"):
        load_model(str(tmp_path / "flip.pt"))
    assert load_model(str(path)).model_id() == small_model.model_id()


def test_odd_entries_in_a_model_file_or_its_info_are_named(tmp_path, small_model):
    """(A sparse weight was torch's RuntimeError without the file's name; model_info of a list
    file returned {}; save_model(info=[1, 2]) said "cannot convert dictionary update sequence";
    a numpy key of info was reported as "info is a dict"; a malicious file's reason was lost
    behind torch's advice to load it with weights_only=False.)"""
    import numpy as np

    from slimkernels.pretrained import save_model
    save_model(small_model, str(tmp_path / "m.pt"))
    d = torch.load(tmp_path / "m.pt", weights_only=True)
    sd = dict(d["state_dict"])
    sd["g_a.0.bias"] = sd["g_a.0.bias"].to_sparse()
    torch.save({**d, "state_dict": sd}, tmp_path / "sparse.pt")
    with pytest.raises(ValueError, match=r"sparse\.pt is a damaged slimkernels model file "
                                         r"\(.*g_a\.0\.bias"):
        load_model(str(tmp_path / "sparse.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt is not a slimkernels model file \(it holds "
                                         r"a list\)"):
        model_info(str(tmp_path / "list.pt"))
    with pytest.raises(ValueError, match=r"info must be a dict \(or None\), got list"):
        save_model(small_model, str(tmp_path / "x.pt"), info=[1, 2])
    # (the key as repr() gives it: np.int64(1) with numpy 2, 1 with numpy 1)
    with pytest.raises(ValueError, match=r"a key of info \((np\.int64\()?1\)?\) is a "
                                         r"numpy\.int64"):
        save_model(small_model, str(tmp_path / "x.pt"), info={np.int64(1): 2})
    assert not (tmp_path / "x.pt").exists()
    torch.save({"format": "slimkernels-model", "info": _RunsCode(str(tmp_path / "ran"))},
               tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"UnpicklingError: .*(GLOBAL|global).*; only tensors "
                                         r"and plain data are read") as e:
        load_model(str(tmp_path / "evil.pt"))
    assert "weights_only set to False" not in str(e.value) and "\x1b" not in str(e.value)


def test_a_weight_average_of_some_weights_only_is_refused(tmp_path, small_model):
    """(An ``ema`` holding some parameters loaded them over the training weights: a mix; the
    trainer's own resume refused such a checkpoint.)"""
    sd = small_model.state_dict()
    ema = {k: v.clone() for k, v in small_model.named_parameters()}
    dropped = sorted(ema)[:2]
    for k in dropped:
        del ema[k]
    ck = tmp_path / "checkpoint.pt"
    torch.save({"model": sd, "config": {"widths": [16, 8], "gdn": "switch"}, "step": 1,
                "ema": ema}, ck)
    with pytest.raises(ValueError, match=rf"its weight average lacks 2 parameter\(s\) \(e\.g\. "
                                         rf"{re.escape(str(dropped))}\); load it with "
                                         rf"weights='train'"):
        load_model(str(ck))
    assert load_model(str(ck), weights="train").model_id() == small_model.model_id()


def test_a_model_loaded_under_inference_mode_holds_normal_tensors():
    """``load_model()`` under ``torch.inference_mode()`` (a common pattern) built a model of
    inference tensors (no version counters): the caches keyed by its state missed at every call
    (compress + decompress 77 ms against 1.7 ms on a 64x96 crop at w=48)."""
    with torch.inference_mode():
        model = load_model()
    assert not any(t.is_inference() for t in model.state_dict().values())
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        model.compress(x, 48)
        ids = {id(model.__dict__["_model_id_cache"]) for _ in range(3) if model.compress(x, 48)}
    assert len(ids) == 1   # (the model id computed once, not at every call)
