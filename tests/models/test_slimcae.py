import pytest
import torch
import torch.nn.functional as F

from slimkernels import container
from slimkernels.models import SlimCAE

from tests._caches import fresh_op_caches

pytest.importorskip("slimkernels._coder")

WIDTHS = (24, 16, 8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SlimCAE(widths=WIDTHS).eval()
    with torch.no_grad():   # a less trivial density than the initial one
        for eb in m.entropy_bottleneck.bottlenecks:
            eb.quantiles.copy_(torch.tensor([-6.0, 0.3, 7.0]).repeat(eb.channels, 1, 1))
    m.update()
    return m


def _own_reconstruction(m, x, width):
    """The model's own quantized reconstruction (eval forward on the padded input), 8-bit."""
    H, W = x.shape[-2:]
    xp = F.pad(x, (0, (-W) % 16, 0, (-H) % 16), mode="replicate")
    with torch.no_grad():
        out = m(xp, width)["x_hat"][..., :H, :W].clamp(0, 1)
    return out.mul(255).round()


def test_forward_shapes_every_width():
    m = SlimCAE(widths=WIDTHS)
    x = torch.rand(2, 3, 32, 48)
    for w in WIDTHS:
        out = m(x, w)
        assert out["x_hat"].shape == x.shape
        assert out["likelihoods"]["y"].shape == (2, w, 2, 3)
        assert out["likelihoods"]["y"].dtype == torch.float32
    with pytest.raises(ValueError, match="width 10 is not one of"):
        m(x, 10)
    with pytest.raises(ValueError, match="RGB images"):
        m(torch.rand(2, 1, 32, 32), 8)


def test_narrow_width_ignores_weights_outside_its_slice():
    torch.manual_seed(1)
    m = SlimCAE(widths=WIDTHS, gdn="slim").eval()
    x = torch.rand(1, 3, 32, 32)
    y0 = m(x, 8)["x_hat"]
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight[8:] += 1.0
            if isinstance(mod, torch.nn.ConvTranspose2d) and mod.out_channels > 3:
                mod.weight[:, 8:] += 1.0
    torch.testing.assert_close(m(x, 8)["x_hat"], y0, rtol=0, atol=0)
    assert not torch.allclose(m(x, 24)["x_hat"], y0)


@pytest.mark.parametrize("size", [(32, 48), (37, 53), (1, 1), (17, 16)])
def test_decompress_equals_own_quantized_reconstruction(model, size):
    """In fp32, compress + decompress is the model's own eval forward (8-bit exact)."""
    torch.manual_seed(sum(size))
    x = torch.rand(1, 3, *size)
    for w in WIDTHS:
        data = model.compress(x, w, precision="fp32")
        xh = model.decompress(data, precision="fp32")
        assert xh.shape == x.shape
        torch.testing.assert_close(xh.mul(255).round(), _own_reconstruction(model, x, w),
                                   rtol=0, atol=0)
        f, sym = model.decompress_latent(data)
        H, W = size
        xp = F.pad(x, (0, (-W) % 16, 0, (-H) % 16), mode="replicate")
        with torch.no_grad():
            ref_sym = model.entropy_bottleneck.for_width(w).quantize_symbols(model.encode(xp, w))
        assert torch.equal(sym, ref_sym)
        assert f.width == w and (f.height, f.img_width) == size


def test_streams_and_metadata(model):
    x = torch.rand(1, 3, 64, 64)
    a = model.compress(x, 24, streams=1)
    b = model.compress(x, 24, streams=3, metadata={"author": b"me"})
    assert a == model.compress(x, 24, streams=1)                      # deterministic
    assert container.unpack(b).metadata == {"author": b"me"}
    assert container.unpack(b).streams == 3
    torch.testing.assert_close(model.decompress(a), model.decompress(b), rtol=0, atol=0)


def test_bf16_file_decodes_in_fp32_to_the_same_latents(model):
    x = torch.rand(1, 3, 48, 32)
    data = model.compress(x, 16, precision="bf16")
    _, sym = model.decompress_latent(data)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model.encode(x, 16)
    ref = model.entropy_bottleneck.for_width(16).quantize_symbols(y)
    assert torch.equal(sym, ref)
    xh32 = model.decompress(data, precision="fp32")
    xh16 = model.decompress(data, precision="bf16")
    assert (xh32 - xh16).abs().max() < 0.05      # bf16 decoder: same latents, ~1e-2 image error


def test_wrong_model_corrupt_truncated_and_newer_files_are_refused(model):
    x = torch.rand(1, 3, 32, 32)
    data = model.compress(x, 8)
    other = SlimCAE(widths=WIDTHS).eval()
    other.update()
    with pytest.raises(container.SlimFormatError, match="different model"):
        other.decompress(data)
    bad = bytearray(data)
    bad[-1] ^= 0x40
    with pytest.raises(container.SlimFormatError, match="payload checksum"):
        model.decompress(bytes(bad))
    with pytest.raises(container.SlimFormatError, match="truncated"):
        model.decompress(data[:-3])
    newer = bytearray(data)
    newer[4] = container.FORMAT_VERSION + 1
    with pytest.raises(container.SlimFormatError, match="newer"):
        model.decompress(bytes(newer))
    with pytest.raises(container.SlimFormatError, match="not a .slim file"):
        model.decompress(b"\x89PNG....")


def test_compress_needs_tables_and_valid_input():
    m = SlimCAE(widths=(8,)).eval()
    with pytest.raises(RuntimeError, match="update"):
        m.compress(torch.rand(1, 3, 16, 16), 8)
    m.update()
    with pytest.raises(ValueError, match="one RGB image"):
        m.compress(torch.rand(2, 3, 16, 16), 8)
    with pytest.raises(ValueError, match="float image"):
        m.compress(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 8)


def test_model_id_tracks_weights(model):
    a = model.model_id()
    assert a == model.model_id() and len(a) == 16
    m2 = SlimCAE(widths=WIDTHS)
    m2.load_state_dict(model.state_dict())
    assert m2.model_id() == a
    with torch.no_grad():
        m2.g_a[0].bias[0] += 1e-3
    assert m2.model_id() != a


def test_gdn_variants_build_and_run():
    for variant in ("switch", "slim", "slim+"):
        m = SlimCAE(widths=(16, 8), gdn=variant)
        out = m(torch.rand(1, 3, 32, 32), 8)
        assert torch.isfinite(out["x_hat"]).all()
    with pytest.raises(ValueError, match="unknown GDN variant"):
        SlimCAE(widths=(8,), gdn="bogus")


@pytest.mark.interpret
def test_triton_written_file_decodes_on_cpu_path_to_the_same_latents(model, monkeypatch):
    """A file written with the Triton kernels (interpreter on CPU here, CUDA on a GPU) holds the
    same latents as one written by the PyTorch path, and decodes with the PyTorch path."""
    pytest.importorskip("triton")
    from slimkernels.backend import interpreter_enabled
    if not interpreter_enabled():
        pytest.skip("needs TRITON_INTERPRET=1 (set by tests/conftest.py without a GPU)")
    torch.manual_seed(7)
    x = torch.rand(1, 3, 16, 32)
    w = WIDTHS[-1]
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "triton")
    data_triton = model.compress(x, w, precision="fp32")
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "torch")
    data_torch = model.compress(x, w, precision="fp32")
    _, sym_triton = model.decompress_latent(data_triton)
    _, sym_torch = model.decompress_latent(data_torch)
    assert torch.equal(sym_triton, sym_torch)
    assert data_triton == data_torch
    torch.testing.assert_close(model.decompress(data_triton, precision="fp32").mul(255).round(),
                               _own_reconstruction(model, x, w), rtol=0, atol=0)


def _unfused(seq, x, width):
    for layer in seq:
        x = layer(x, width if getattr(layer, "slim_output", True) else None)
    return x


@pytest.mark.parametrize("variant", ["switch", "slim", "slim+"])
def test_fused_transforms_equal_layer_by_layer_float64(variant):
    torch.manual_seed(3)
    m = SlimCAE(widths=(24, 8), gdn=variant).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.rand_like(p))
    x = torch.rand(1, 3, 32, 48, dtype=torch.float64)
    m.g_a.fuse_gdn = m.g_s.fuse_gdn = True      # the fused ops (by default only on Triton)
    for w in (24, 8):
        with torch.no_grad():
            y = m.g_a(x, w)
            torch.testing.assert_close(y, _unfused(m.g_a, x, w), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(m.g_s(y, w), _unfused(m.g_s, y, w), rtol=1e-12, atol=1e-12)
    # with gradients (training) too
    y = m.g_a(x, 8)
    y.sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.interpret
def test_fused_transforms_on_triton_match_torch(monkeypatch):
    pytest.importorskip("triton")
    from slimkernels.backend import interpreter_enabled
    if not interpreter_enabled():
        pytest.skip("needs TRITON_INTERPRET=1")
    torch.manual_seed(4)
    m = SlimCAE(widths=(16, 8)).eval()
    x = torch.rand(1, 3, 32, 32)
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "torch")
    with torch.no_grad():
        y_ref = m.g_a(x, 8)
        x_ref = m.g_s(y_ref, 8)
    monkeypatch.setenv("SLIMKERNELS_BACKEND", "triton")
    with torch.no_grad():
        y = m.g_a(x, 8)
        xh = m.g_s(y_ref, 8)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xh, x_ref, rtol=1e-4, atol=1e-5)


# -- model audit (thirty-second sitting) --------------------------------------------------------
def test_a_hook_on_a_conv_sees_the_conv_output_where_conv_and_gdn_fuse(monkeypatch):
    """SlimSequential skipped the conv + GDN fusion only for a hooked GDN: a hook on the conv
    saw GDN(conv) (and an output-changing hook acted after the GDN)."""
    torch.manual_seed(0)
    m = SlimCAE((32, 16)).eval()
    x = torch.rand(1, 3, 64, 64)
    seen = {}
    m.g_a[0].register_forward_hook(lambda mod, inp, out: seen.__setitem__("y", out.detach()))
    monkeypatch.setattr(type(m.g_a), "fuse_gdn", True)     # fuse wherever the backend can
    with torch.no_grad():
        m.encode(x, 16)
        conv = F.conv2d(x.double(), m.g_a[0].weight[:16].double(), m.g_a[0].bias[:16].double(),
                        stride=4, padding=4)
    err = ((seen["y"].double() - conv).abs().max() / conv.abs().max()).item()
    assert err < 1e-5


def test_encode_decode_and_forward_refuse_what_they_cannot_run():
    m = SlimCAE((16, 8)).eval()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="expects RGB images"):
        m.encode(x[:, :1], 8)          # a gray image read through the weight's first channel
    with pytest.raises(ValueError, match=r"decode expects a latent \[N, width, h, w\]"):
        m.decode(torch.rand(8, 2, 2))
    with pytest.raises(ValueError, match=r"expects a latent \[N, width, H, W\]"):
        m.entropy_bottleneck(torch.rand(8, 2, 2))
    m.train()
    for shape in ((2, 3, 30, 40), (2, 3, 32, 1)):
        with pytest.raises(ValueError, match="sides must be multiples of 16"):
            m(torch.rand(*shape), 8)
        with pytest.raises(ValueError, match="sides must be multiples of 16"):
            m.forward_widths(torch.rand(*shape), [16, 8])
    assert m(torch.rand(1, 3, 32, 48), 8)["x_hat"].shape == (1, 3, 32, 48)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_converted_model_trains_and_its_likelihoods_stay_float32(dtype):
    """model.double() / .bfloat16() converted the entropy models' MLP too: training failed with
    'expected scalar type Double but found Float' (the latent is computed in float32)."""
    torch.manual_seed(0)
    m = SlimCAE((16, 8)).to(dtype).train()
    x = torch.rand(1, 3, 32, 32, dtype=dtype)
    out = m(x, 8)
    lik = out["likelihoods"]["y"]
    assert lik.dtype == torch.float32 and torch.isfinite(lik).all()
    (lik.log().sum() + m.aux_loss()).backward()
    q = m.entropy_bottleneck.for_width(8).quantiles
    assert q.grad is not None and q.grad.dtype == dtype
    m.eval()
    assert m(x, 8)["likelihoods"]["y"].dtype == torch.float32


def test_gdn_layers_refuse_widths_below_one():
    from slimkernels.nn import SlimGDNPlus, SwitchGDN
    for cls in (SlimGDNPlus, SwitchGDN):
        with pytest.raises(ValueError, match="widths must be distinct ints >= 1"):
            cls([8, 0, -3])


@pytest.mark.parametrize("train", [True, False])
def test_forward_on_the_meta_device_gives_the_shapes(train):
    """Shape inference: a SlimCAE on meta tensors runs forward, encode and decode (before: the
    CPU conv kernels took the meta tensors, then autocast refused the meta device)."""
    m = SlimCAE(widths=WIDTHS).train(train)
    x = torch.rand(2, 3, 32, 48)
    ref = m(x, 16)
    mm = SlimCAE(widths=WIDTHS).to("meta").train(train)
    out = mm(x.to("meta"), 16)
    assert out["x_hat"].is_meta and out["x_hat"].shape == ref["x_hat"].shape
    assert out["likelihoods"]["y"].shape == ref["likelihoods"]["y"].shape
    with torch.no_grad():
        y = mm.encode(x.to("meta"), 8)
        assert y.is_meta and y.shape == (2, 8, 2, 3)
        assert mm.decode(y).shape == (2, 3, 32, 48)


def test_training_after_a_validation_under_inference_mode():
    """Validate under torch.inference_mode(), then train on: the output layer's cached tap plan
    had been an inference tensor ("Inference tensors cannot be saved for backward")."""
    fresh_op_caches()
    torch.manual_seed(0)
    m = SlimCAE(widths=(16, 8))
    x = torch.rand(2, 3, 32, 32)
    m.eval()
    with torch.inference_mode():
        m(x, 8)
    m.train()
    out = m(x, 8)
    (out["x_hat"].square().mean() + out["likelihoods"]["y"].log().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in (m.g_s[-1].weight, m.g_a[0].weight))


def test_a_float64_model_under_no_grad_after_inference_mode():
    fresh_op_caches()
    torch.manual_seed(0)
    m = SlimCAE(widths=(16, 8)).double().eval()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    with torch.inference_mode():
        a = m(x, 8)["x_hat"]
    with torch.no_grad():
        b = m(x, 8)["x_hat"]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_half_model_decodes_under_bf16_autocast():
    """model.half() under CPU bf16 autocast: the no-grad transposed convs had failed inside
    torch ("Unexpected floating ScalarType in at::autocast::prioritize")."""
    fresh_op_caches()
    torch.manual_seed(0)
    m = SlimCAE(widths=(48, 16)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = m.decode(m.encode(x, 48))
        mh = SlimCAE(widths=(48, 16)).eval()
        mh.load_state_dict(m.state_dict())
        mh.half()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_hat = mh.decode(mh.encode(x, 48))
    assert x_hat.shape == ref.shape and torch.isfinite(x_hat).all()
    assert ((x_hat.float() - ref).abs().max() / ref.abs().max()).item() < 5e-2


@pytest.mark.parametrize("opt", ["Adam", "SGD"])
def test_a_fused_optimizer_step_is_seen_by_the_caches(opt):
    """torch's fused optimizer steps leave the version counters unchanged, which key the weight
    caches: the forward and compress after a step had used the weights of before it (up to
    0.08 apart at w=48); slimkernels bumps the counters after such steps."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    m = SlimCAE(widths=(48, 16)).eval()
    m.update()
    with torch.no_grad():
        m(x, 48)
    m.compress(x, 48, precision="fp32")               # warm every cache
    with torch.no_grad():
        before = m(x, 48)["x_hat"]
    o = getattr(torch.optim, opt)(m.parameters(), lr=1e-2 if opt == "Adam" else 10.0,
                                  fused=True)
    m(x, 48)["x_hat"].square().mean().backward()
    o.step()
    m.update()
    f = SlimCAE(widths=(48, 16)).eval()
    f.load_state_dict(m.state_dict())
    f.update()
    with torch.no_grad():
        got, want = m(x, 48)["x_hat"], f(x, 48)["x_hat"]
    assert (want - before).abs().max().item() > 1e-3   # (the step moved the output: testable)
    assert (got - want).abs().max().item() < 1e-5
    assert m.compress(x, 48, precision="fp32") == f.compress(x, 48, precision="fp32")
