"""slimkernels.codec: the SlimCodec base class gives any slimmable autoencoder coding."""
import os
import warnings

import numpy as np
import pytest
import torch

from slimkernels import container
from slimkernels.codec import SlimCodec, SlimSequential, model_fingerprint
from slimkernels.nn import SlimConv2d, SlimConvTranspose2d, SlimEntropyBottleneck, SlimGDN


class Tiny(SlimCodec):
    downsampling = 4

    def __init__(self, widths=(12, 8)):
        super().__init__(widths)
        N = self.widths[0]
        self.g_a = SlimSequential(SlimConv2d(3, N, 5, 2, 2, widths=self.widths), SlimGDN(N),
                                  SlimConv2d(N, N, 5, 2, 2, widths=self.widths))
        self.g_s = SlimSequential(SlimConvTranspose2d(N, N, 5, 2, 2, 1, widths=self.widths),
                                  SlimGDN(N, inverse=True), SlimConvTranspose2d(N, 3, 5, 2, 2, 1))
        self.entropy_bottleneck = SlimEntropyBottleneck(self.widths)

    def config(self):
        return {"arch": "tiny", "widths": self.widths}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Tiny().eval()
    m.update()
    return m


@pytest.mark.parametrize("width", [12, 8])
@pytest.mark.parametrize("size", [(13, 10), (16, 16), (1, 5)])
def test_roundtrip_matches_forward(model, width, size):
    """decompress(compress(x)) in fp32 is the eval-mode forward pass (median rounding), cropped."""
    H, W = size
    x = torch.rand(1, 3, H, W)
    data = model.compress(x, width, precision="fp32")
    x_hat = model.decompress(data, precision="fp32")
    assert x_hat.shape == (1, 3, H, W) and x_hat.dtype == torch.float32
    xp = torch.nn.functional.pad(x, (0, (-W) % 4, 0, (-H) % 4), mode="replicate")
    with torch.no_grad():
        ref = model(xp, width)["x_hat"][..., :H, :W].clamp(0, 1)
    torch.testing.assert_close(x_hat, ref, rtol=1e-5, atol=1e-6)
    f = container.unpack(data)
    assert (f.width, f.height, f.img_width, f.model_id) == (width, H, W, model.model_id())


def test_metadata_streams_and_3d_input(model):
    x = torch.rand(3, 20, 24)
    data = model.compress(x, 8, streams=3, metadata={"k": b"v", "empty": b""})
    f = container.unpack(data)
    assert f.metadata == {"k": b"v", "empty": b""} and f.streams == 3
    torch.testing.assert_close(model.decompress(data), model.decompress(model.compress(x, 8)))


def test_another_models_file_is_refused(model):
    data = model.compress(torch.rand(1, 3, 8, 8), 12)
    other = Tiny()
    other.load_state_dict(model.state_dict())
    assert other.model_id() == model.model_id()
    with torch.no_grad():
        other.g_a[0].bias.add_(1e-3)
    with pytest.raises(container.SlimFormatError, match="different model"):
        other.decompress(data)


def test_errors(model):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="not one of this model's widths"):
        model.compress(x, 10)
    with pytest.raises(ValueError, match="one RGB image"):
        model.compress(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="float image"):
        model.compress(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="precision"):
        model.compress(x, precision="fp16")
    with pytest.raises(RuntimeError, match="update"):
        Tiny().compress(x)
    with pytest.raises(ValueError, match="widths must not be empty"):
        Tiny(widths=())
    with pytest.raises(ValueError, match="positive"):
        Tiny(widths=(8, 0))

    class NoConfig(Tiny):
        config = SlimCodec.config
    with pytest.raises(NotImplementedError, match="config"):
        NoConfig().model_id()


@pytest.mark.parametrize("bad", [12.5, 12.0, "12", True, float("nan")])
def test_widths_must_be_ints(model, bad):
    """(int() used to truncate: 12.5 and "12" coded at width 12.)"""
    import numpy as np
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="width must be an int"):
        model.compress(x, bad)
    with pytest.raises(ValueError, match="width must be an int"):
        model.g_a[0](x, bad)
    ref = model.compress(x, 12)
    assert model.compress(x, np.int64(12)) == ref == model.compress(x, torch.tensor(12))


def test_widths_a_slim_file_cannot_name_are_refused_before_any_layer_is_built():
    """(SlimCAE(widths=[2**16]) went on to allocate its 2**16-channel layers: the process was
    killed for its memory.)"""
    from slimkernels import container
    from slimkernels.models import SlimCAE
    with pytest.raises(ValueError, match="SlimCAE: width 65536 is wider than a .slim file can "
                                         "name \\(at most 65535\\): use narrower widths"):
        SlimCAE(widths=[2 ** 16, 8])
    assert SlimCodec([container.MAX_WIDTH, 1]).widths == [65535, 1]   # (no layers: no memory)
    with pytest.raises(ValueError, match="width 65536 out of range 1..65535"):
        container.pack(container.SlimFile(bytes(16), 65536, 1, 1, 1, b""))


def _copy(model):
    m = Tiny().eval()
    m.load_state_dict(model.state_dict())
    m.update()
    return m


def _nan_in_g_s(m):
    with torch.no_grad():
        m.g_s[0].weight[0, 0, 0, 0] = float("nan")


@pytest.mark.parametrize("damage,msg", [
    # (_coding_device checks the first parameter only: g_s.half() failed inside autocast)
    *[(lambda m, d=d: m.g_s.to(d), rf"needs every weight in float32, but g_s\.\S+ is {d}: "
       rf"call model.float\(\)") for d in (torch.float16, torch.bfloat16, torch.float64)],
    # (decompress returned a NaN image; compress blamed the image or the weights)
    (_nan_in_g_s, r"needs finite weights, but g_s\.0\.weight holds NaN or inf"),
])
def test_weights_that_cannot_code_are_named(model, damage, msg):
    m = _copy(model)
    x = torch.rand(1, 3, 16, 16)
    data = m.compress(x, 8)
    damage(m)
    for call in (lambda: m.compress(x, 8), lambda: m.decompress(data)):
        with pytest.raises(ValueError, match=msg):
            call()


def test_cdf_tables_of_another_dtype_are_named(model):
    m = _copy(model)
    eb = m.entropy_bottleneck.for_width(8)
    eb._quantized_cdf = eb._quantized_cdf.long()
    with pytest.raises(ValueError, match="CDF table is int64, not int32: call model.update()"):
        m.compress(torch.rand(1, 3, 16, 16), 8)
    m.update()
    m.compress(torch.rand(1, 3, 16, 16), 8)


def test_compress_names_a_non_tensor_image(model):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(TypeError, match=r"read_image returns \(x, note\): pass x"):
        model.compress((x, ""), 8)
    with pytest.raises(TypeError, match="expects the image as a tensor, got ndarray"):
        model.compress(x.numpy(), 8)


@pytest.mark.parametrize("bad", ["/a/path.slim", None, 7, 2 ** 40, 1.5])
def test_decompress_refuses_what_is_not_bytes(model, bad):
    with pytest.raises(TypeError, match="must be bytes"):   # (7: bytes(7), seven zero bytes)
        model.decompress(bad)


def test_a_corrupt_payload_with_a_valid_checksum_is_a_format_error(model):
    """What the range decoder refuses is reported as the container's SlimFormatError (its
    documented error for a file that cannot be read), naming the payload."""
    import dataclasses
    data = model.compress(torch.rand(1, 3, 16, 16), 8)
    f = container.unpack(data)
    for bad in (dataclasses.replace(f, height=32),                # more symbols than coded
                dataclasses.replace(f, payload=f.payload[:-2]),    # truncated stream
                dataclasses.replace(f, payload=b"\x07" + f.payload[1:])):
        with pytest.raises(container.SlimFormatError, match="corrupt .slim payload") as e:
            model.decompress(container.pack(bad))
        # what the header asked for, so that a size / payload mismatch reads as one
        st = model._stride()
        want = 8 * (-(-bad.height // st)) * (-(-bad.img_width // st))
        assert (f"the header says a {bad.img_width}x{bad.height} image at width 8, {want} "
                f"latent symbols") in str(e.value)


def test_decompress_refuses_an_image_over_max_pixels_before_decoding(model, monkeypatch):
    """max_pixels (default DECODE_MAX_PIXELS, ~179 MP): a file whose image has more pixels is
    refused before its symbols are decoded (a 1.7 MB file of the most likely symbols asked for a
    16384 x 16384 image: 3 GB, 5.4 GB at its peak); None lifts it; bad values are refused."""
    from slimkernels import codec as codec_mod, coding
    assert codec_mod.DECODE_MAX_PIXELS == 178_956_970
    data = model.compress(torch.rand(1, 3, 20, 30), 8)
    assert model.decompress(data, max_pixels=600).shape == (1, 3, 20, 30)
    ref = model.decompress(data, max_pixels=None)
    real = coding.decode_prepared
    calls = []
    monkeypatch.setattr(coding, "decode_prepared", lambda *a, **k: calls.append(1) or real(*a, **k))
    for op in (model.decompress, model.decompress_latent):
        with pytest.raises(container.ImageTooLargeError) as e:
            op(data, max_pixels=599)
        assert (e.value.width, e.value.height, e.value.limit) == (30, 20, 599)
        assert "30x20 = 600 pixels, more than the limit of 599" in str(e.value)
        assert "pass a larger max_pixels (or None)" in str(e.value)
        assert isinstance(e.value, ValueError) and calls == []
        for bad in (0, -5, 2.5, True, "600"):
            with pytest.raises(ValueError, match="max_pixels must be"):
                op(data, max_pixels=bad)
    assert torch.equal(model.decompress(data), ref) and calls == [1]


def test_a_forged_image_size_is_refused_before_its_latent_is_decoded(model):
    """A file whose (checksummed) size claims a latent its payload cannot hold with these
    tables (at least 0.1 bits a symbol here) is refused before the decoder allocates and fills
    it: the decoder once decoded every claimed symbol before noticing the data had run out
    (a 444-byte file claiming a 16384 x 16384 image at w=192: 3.3 GB and 12 s)."""
    import dataclasses

    def varint(v):
        out = bytearray()
        while True:
            out.append((v & 0x7F) | (0x80 if v >= 0x80 else 0))
            v >>= 7
            if not v:
                return bytes(out)

    f = container.unpack(model.compress(torch.rand(1, 3, 16, 16), 12))
    n = 12 * 512 * 512     # the latent of a 2048 x 2048 image at width 12
    payload = bytes([1, 16]) + varint(n) + varint(1) + varint(64) + bytes(range(1, 33)) + \
        bytes(32)          # (the coder's header: format, precision, counts, one 64-byte stream)
    forged = container.pack(dataclasses.replace(f, height=2048, img_width=2048, payload=payload))
    with pytest.raises(container.SlimFormatError, match=r"3145728 symbols need at least \d+ "
                                                        r"bytes with these tables"):
        model.decompress(forged)


@pytest.mark.parametrize("bad,msg", [("ab", "metadata must be a dict of str -> bytes, got str"),
                                     (42, "metadata must be a dict of str -> bytes, got int"),
                                     ({"a": "text"}, "metadata value of 'a' must be bytes"),
                                     ({"": b"x"}, "metadata key '' must be 1..255 UTF-8 bytes")])
def test_bad_metadata_is_refused_before_the_transform(model, monkeypatch, bad, msg):
    """(A str or int metadata raised dict()'s "dictionary update sequence element #0 ..." /
    "'int' object is not iterable", and every bad entry failed only after the coding.)"""
    ran = []
    monkeypatch.setattr(type(model), "encode", lambda *a, **k: ran.append(1))
    with pytest.raises(ValueError, match=msg):
        model.compress(torch.rand(1, 3, 8, 8), 8, metadata=bad)
    assert not ran


def test_compress_refuses_a_side_a_file_cannot_hold_before_the_transform(model, monkeypatch):
    monkeypatch.setattr(container, "MAX_SIDE", 31)
    ran = []
    monkeypatch.setattr(type(model), "encode", lambda *a, **k: ran.append(1))
    with pytest.raises(ValueError, match=r"the image is 32x8 pixels \(width x height\); a "
                                         r".slim file holds sides of at most 31: split the image"):
        model.compress(torch.rand(1, 3, 8, 32), 8)   # (it said 8x32: height x width)
    assert not ran


def test_bf16_compress_decodes(model):
    x = torch.rand(1, 3, 16, 16)
    x_hat = model.decompress(model.compress(x, 12, precision="bf16"), precision="bf16")
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()


def test_fingerprint_is_slimcae_model_id():
    from slimkernels.models import SlimCAE
    m = SlimCAE(widths=(8, 4), gdn="slim")
    assert model_fingerprint(m, m.config()) == m.model_id()


class CAEAsCodec(SlimCodec):
    """SlimCAE's modules under SlimCodec: same state_dict keys, so the same model id."""

    def __init__(self, cae):
        super().__init__(cae.widths)
        self.g_a, self.g_s, self.entropy_bottleneck = cae.g_a, cae.g_s, cae.entropy_bottleneck
        self._cfg = cae.config()

    def config(self):
        return self._cfg


def test_slimcae_could_be_a_slimcodec():
    """SlimCodec writes the very bytes SlimCAE writes (the lead may rebase SlimCAE on it)."""
    from slimkernels.models import SlimCAE
    torch.manual_seed(0)
    cae = SlimCAE(widths=(16, 8), gdn="slim+").eval()
    cae.update()
    codec = CAEAsCodec(cae).eval()
    assert codec.model_id() == cae.model_id()
    x = torch.rand(1, 3, 37, 21)
    for w in (16, 8):
        data = codec.compress(x, w, streams=2, metadata={"a": b"b"})
        assert data == cae.compress(x, w, streams=2, metadata={"a": b"b"})
        torch.testing.assert_close(codec.decompress(data), cae.decompress(data), rtol=0, atol=0)


def test_model_id_cache_follows_weight_changes(model):
    m = Tiny()
    first = m.model_id()
    assert m.model_id() is first                    # cached
    with torch.no_grad():
        m.g_s[0].weight[0, 0, 0, 0] += 1.0
    assert m.model_id() != first
    m.load_state_dict(model.state_dict())
    assert m.model_id() == model.model_id()


def test_channels_last_model_roundtrip(model):
    m = Tiny().eval()
    m.load_state_dict(model.state_dict())
    m = m.to(memory_format=torch.channels_last)
    x = torch.rand(1, 3, 12, 20)
    data = m.compress(x, 8, precision="fp32")
    x_hat = m.decompress(data, precision="fp32")
    torch.testing.assert_close(x_hat, model.decompress(data, precision="fp32"), rtol=1e-5,
                               atol=1e-6)


def test_latent_indexes():
    from slimkernels.codec import latent_indexes
    idx = latent_indexes(3, 2, 4)
    assert idx.shape == (1, 3, 2, 4) and idx.dtype.name == "int32" and idx.flags.c_contiguous
    for c in range(3):
        assert (idx[0, c] == c).all()


@pytest.mark.parametrize("layout", [True, False])
def test_input_channels_last_switch(model, layout):
    """Forcing the input layout changes only the memory format, not the decoded image."""
    m = Tiny().eval()
    m.load_state_dict(model.state_dict())
    m.input_channels_last = layout
    seen = []
    hook = m.g_a[0].register_forward_pre_hook(lambda mod, inp: seen.append(
        inp[0].is_contiguous(memory_format=torch.channels_last) and not inp[0].is_contiguous()))
    x = torch.rand(1, 3, 12, 20)
    data = m.compress(x, 12, precision="fp32")
    hook.remove()
    assert seen == [layout]
    torch.testing.assert_close(m.decompress(data, precision="fp32"),
                               model.decompress(data, precision="fp32"), rtol=1e-5, atol=1e-6)


def test_default_transform_layout_per_device(monkeypatch):
    """By default the transforms get channels_last inputs on CPU and CUDA (where the convolutions
    convert to it anyway), the parameters' layout elsewhere; each switch and the model's own
    ``input_channels_last`` decide where set."""
    import slimkernels.ops.conv as oc
    m = Tiny()
    cpu, cuda, meta = torch.device("cpu"), torch.device("cuda"), torch.device("meta")
    assert m._transforms_channels_last(cpu) is True and m._transforms_channels_last(cuda) is True
    assert m._transforms_channels_last(meta) is None
    monkeypatch.setattr(oc, "TRITON_CHANNELS_LAST", False)
    assert m._transforms_channels_last(cuda) is None and m._transforms_channels_last(cpu) is True
    monkeypatch.setattr(oc, "CPU_CHANNELS_LAST", False)
    assert m._transforms_channels_last(cpu) is None
    m.input_channels_last = False
    assert m._transforms_channels_last(cpu) is False and m._transforms_channels_last(cuda) is False


# -- precision ---------------------------------------------------------------------------------
def _cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(ln.split(":", 1)[1].split()) for ln in f if ln.startswith("flags")),
                        None)
    except OSError:
        return None


def test_native_bf16_follows_the_cpu_flags():
    from slimkernels.codec import native_bf16
    flags = _cpuinfo_flags()
    if flags is None or not torch.backends.mkldnn.is_available():
        pytest.skip("no /proc/cpuinfo flags or no oneDNN: nothing to compare with")
    assert native_bf16("cpu") == bool({"amx_bf16", "avx512_bf16"} & flags)
    assert native_bf16() == native_bf16(torch.device("cpu"))
    assert native_bf16("meta") is False


def test_resolve_precision():
    from slimkernels.codec import PRECISIONS, native_bf16, resolve_precision
    assert PRECISIONS == ("auto", "fp32", "bf16")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"        # allowed everywhere
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("auto", "meta") == "fp32"
    for bad in ("fp16", "BF16", None, "float32"):
        with pytest.raises(ValueError, match="'auto', 'fp32', 'bf16'"):
            resolve_precision(bad, "cpu")
    with pytest.raises(ValueError, match="precision"):
        Tiny().decompress(b"", precision="fp16")


def test_default_precision_is_auto(model):
    from slimkernels.codec import resolve_precision
    x = torch.rand(1, 3, 20, 28)
    p = resolve_precision("auto", "cpu")
    data = model.compress(x, 12)
    assert data == model.compress(x, 12, precision=p)
    torch.testing.assert_close(model.decompress(data), model.decompress(data, precision=p),
                               rtol=0, atol=0)


@pytest.mark.parametrize("enc", ["fp32", "bf16"])
def test_cross_precision_files_decode_to_the_same_latents(model, enc):
    """The coding path is exact: a file written in one precision decodes in the other to the
    very latents the encoder quantized, and each decoder is its own transform of them."""
    torch.manual_seed(5)
    x = torch.rand(1, 3, 24, 20)
    data = model.compress(x, 12, precision=enc)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enc == "bf16"):
        y = model.encode(x, 12)
    eb = model.entropy_bottleneck.for_width(12)
    _, sym = model.decompress_latent(data)
    assert torch.equal(sym, eb.quantize_symbols(y))
    outs = {}
    for dec in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dec == "bf16"):
            ref = model.decode(eb.dequantize_symbols(sym)).float().clamp(0, 1)
        outs[dec] = model.decompress(data, precision=dec)
        torch.testing.assert_close(outs[dec], ref, rtol=0, atol=0)
    # bf16 decoder of the same latents: bf16-level differences only (~1e-2), never NaN
    assert torch.isfinite(outs["bf16"]).all()
    assert (outs["bf16"] - outs["fp32"]).abs().max().item() < 5e-2


@pytest.mark.parametrize("as_is", [True, False])
def test_image_input_is_dense_channels_last_and_cast_once(model, monkeypatch, as_is):
    """An HWC image viewed as NCHW ("channels_last" with batch stride 3) reaches the first conv
    with dense channels_last strides (oneDNN's fast path), under bf16 already in bf16, or where
    the direct AMX conv rounds it as it reads it (CPU_IMAGE_AS_IS) as it is in float32, and
    the file is the one the plain autocast pipeline writes."""
    from slimkernels import codec
    from slimkernels.ops.conv import amx_conv_available
    monkeypatch.setattr(codec, "CPU_IMAGE_AS_IS", as_is)
    torch.manual_seed(6)
    hwc = torch.rand(16, 24, 3)
    x = hwc.permute(2, 0, 1)[None]                       # strides (3, 1, 72, 3)
    assert x.stride()[0] == 3
    seen = []
    hook = model.g_a[0].register_forward_pre_hook(lambda mod, inp: seen.append(
        (inp[0].stride(), inp[0].dtype)))
    try:
        d32 = model.compress(x, 12, precision="fp32")
        d16 = model.compress(x, 12, precision="bf16")
    finally:
        hook.remove()
    dense_cl = (16 * 24 * 3, 1, 24 * 3, 3)
    first_conv_dtype = torch.float32 if as_is and amx_conv_available() else torch.bfloat16
    assert seen == [(dense_cl, torch.float32), (dense_cl, first_conv_dtype)]
    eb = model.entropy_bottleneck.for_width(12)
    for data, p in ((d32, "fp32"), (d16, "bf16")):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=p == "bf16"):
            y = model.encode(x.contiguous(), 12)
        assert torch.equal(model.decompress_latent(data)[1], eb.quantize_symbols(y))


@pytest.mark.parametrize("layout, size", [("nchw", (37, 50)), ("hwc", (37, 50)),
                                          ("hwc", (40, 52)), ("channels_last", (37, 50))])
def test_image_conversions_give_torchs_file_and_image(model, monkeypatch, layout, size):
    """compress's image cast and decompress's output cast + clamp (one pass each, see
    slimkernels.ops.image_io) write the same file and return the same image (values, strides)
    as torch's passes. 40 x 52 needs no padding: the HWC view (batch stride 3) reaches the cast
    as it is."""
    import slimkernels.codec as codec_mod
    from slimkernels.ops import image_io
    torch.manual_seed(8)
    x = torch.rand(1, 3, *size) * 1.2 - 0.1              # some pixels outside [0, 1]
    if layout == "hwc":
        x = x[0].permute(1, 2, 0).contiguous().permute(2, 0, 1)[None]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    data = model.compress(x, 12, precision="bf16")
    img = model.decompress(data, precision="bf16")
    monkeypatch.setattr(codec_mod, "image_to_bf16", image_io.image_to_bf16_reference)
    monkeypatch.setattr(codec_mod, "bf16_to_image", image_io.bf16_to_image_reference)
    assert model.compress(x, 12, precision="bf16") == data
    ref = model.decompress(data, precision="bf16")
    assert img.shape == ref.shape == (1, 3, *size) and torch.equal(img, ref)
    assert img.stride() == ref.stride() and img.dtype == ref.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1


def _decoder_inputs(codec, layer, data, precisions):
    """What ``layer`` of ``codec.g_s`` receives when ``codec.decompress(data)`` runs in each of
    ``precisions`` (a forward pre-hook, removed after)."""
    seen = []
    hook = codec.g_s[layer].register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    try:
        for p in precisions:
            codec.decompress(data, precision=p)
    finally:
        hook.remove()
    return seen


def test_latent_input_is_bf16_channels_last_under_bf16(model):
    """decompress hands the synthesis transform y_hat = symbols + medians: under bf16 on CPU, as
    bf16 channels_last when g_s starts with this library's IGDN or transposed conv (they compute
    in bf16 anyway; the first IGDN then runs the one-pass bf16 kernel), float32 otherwise; the
    values are the dequantized symbols, rounded once."""
    torch.manual_seed(7)
    data = model.compress(torch.rand(1, 3, 16, 20), 12, precision="fp32")
    y32, y16 = _decoder_inputs(model, 0, data, ("fp32", "bf16"))
    ref = model.entropy_bottleneck.for_width(12).dequantize_symbols(model.decompress_latent(data)[1])
    assert y32.dtype == torch.float32 and torch.equal(y32, ref)
    assert y16.dtype == torch.bfloat16 and y16.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y16, ref.bfloat16())
    # the model's input_channels_last = False keeps the latent NCHW (still bf16)
    model.input_channels_last = False
    try:
        (yn,) = _decoder_inputs(model, 0, data, ("bf16",))
    finally:
        del model.input_channels_last
    assert yn.dtype == torch.bfloat16 and yn.is_contiguous()
    assert torch.equal(yn, ref.bfloat16())
    # a transform starting with another layer (a plain conv here) keeps the float32 latent
    plain = Tiny().eval()
    plain.load_state_dict(model.state_dict())
    plain.g_s = SlimSequential(torch.nn.Identity(), *list(model.g_s))
    data = plain.compress(torch.rand(1, 3, 16, 20), 12, precision="fp32")
    (yp,) = _decoder_inputs(plain, 1, data, ("bf16",))
    assert yp.dtype == torch.float32


def test_dense_strides_helper():
    from slimkernels.codec import _dense
    x = torch.rand(8, 10, 3).permute(2, 0, 1)[None]
    out = _dense(x, torch.float32, torch.channels_last)
    assert out.stride() == (240, 1, 30, 3) and torch.equal(out, x)
    assert out.data_ptr() == x.data_ptr()           # one image: a view with the dense strides
    assert _dense(out, torch.float32, torch.channels_last) is out        # already dense: no copy
    xb = torch.rand(8, 10, 3, 2).permute(3, 2, 0, 1)                      # a batch: copied
    ob = _dense(xb, torch.float32, torch.channels_last)
    assert ob.stride() == (240, 1, 30, 3) and torch.equal(ob, xb) and ob.data_ptr() != xb.data_ptr()
    n = _dense(x, torch.bfloat16, torch.contiguous_format)
    assert n.is_contiguous() and n.dtype == torch.bfloat16 and torch.equal(n, x.bfloat16())
    # NCHW fp32 -> bf16 channels_last (cast first, then the transposing copy): same values
    c = _dense(n.float().contiguous(), torch.bfloat16, torch.channels_last)
    assert c.stride() == (240, 1, 30, 3) and c.dtype == torch.bfloat16 and torch.equal(c, n)
    xr = torch.rand(2, 3, 5, 7)
    assert torch.equal(_dense(xr, torch.bfloat16, torch.channels_last), xr.bfloat16())


def test_latent_indexes_cached_read_only():
    from slimkernels import codec
    a = codec.latent_indexes(4, 3, 5)
    assert codec.latent_indexes(4, 3, 5) is a and not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0, 0, 0] = 1
    big = codec.latent_indexes(8, 1024, 512)            # 16 MiB: built, not kept
    assert big.shape == (1, 8, 1024, 512) and codec.latent_indexes(8, 1024, 512) is not big
    for i in range(codec._INDEXES_CACHE_MAX + 2):       # bounded
        codec.latent_indexes(2, 1, i + 1)
    assert len(codec._INDEXES_CACHE) <= codec._INDEXES_CACHE_MAX


def test_model_id_follows_update_and_data_swaps(model):
    m = Tiny().eval()
    m.load_state_dict(model.state_dict())
    first = m.model_id()
    with torch.no_grad():                                 # update() reassigns the CDF buffers
        m.entropy_bottleneck.for_width(8).quantiles[:, 0, 2] += 3.0
    assert m.model_id() != first                          # in place: version counter
    second = m.model_id()
    m.update()
    assert m.model_id() != second                         # new buffer tensors
    third = m.model_id()
    m.g_a[0].bias.data = m.g_a[0].bias.data + 1.0         # .data swap: new storage
    assert m.model_id() != third
    from slimkernels.codec import model_fingerprint
    assert m.model_id() == model_fingerprint(m, m.config())


def test_gdn_fusion_default_follows_backend_grad_and_amx(model, monkeypatch):
    """By default on CPU a conv + GDN pair fuses only without gradient where the direct AMX conv
    can run the GDN in its epilogue (elsewhere the fused op would chain the same calls: the
    layers run one by one); fuse_gdn forces it either way, with the same result."""
    import slimkernels.ops.conv as C
    from slimkernels.codec import SlimSequential
    calls = []
    gdn = model.g_a[1]
    real = type(gdn).forward
    # counted through the class's forward, declared as what the fused form computes
    # (_op_forward): a hook, an instance-level forward or another forward would keep the layer
    # out of the fusion
    counted = lambda self, *a, **k: (self is gdn and calls.append(1)) or real(self, *a, **k)
    monkeypatch.setattr(type(gdn), "forward", counted)
    monkeypatch.setattr(type(gdn), "_op_forward", counted)
    x = torch.rand(1, 3, 16, 16)
    try:
        with torch.no_grad():
            monkeypatch.setattr(C, "CPU_AMX_CONV_GDN", False)
            y = model.g_a(x, 12)
            assert calls == [1]                           # not available: layer by layer
            monkeypatch.setattr(C, "CPU_AMX_CONV_GDN", True)
            model.g_a(x, 12)
            assert len(calls) == (1 if C.amx_epilogue_gdn_available() else 2)
            calls.clear()
            model.g_a.fuse_gdn = True
            y_fused = model.g_a(x, 12)
            assert calls == []                            # fused into the conv op
        del model.g_a.fuse_gdn
        model.g_a(x, 12)                                  # gradient recorded: layer by layer
        assert calls == [1]
    finally:
        model.g_a.__dict__.pop("fuse_gdn", None)
    assert SlimSequential.fuse_gdn is None
    torch.testing.assert_close(y_fused, y, rtol=1e-5, atol=1e-6)


class _Removable:
    def __init__(self, fn):
        self.remove = fn


@pytest.mark.parametrize("kind", ["hook", "pre_hook", "global_hook", "instance_forward",
                                  "backward_hook"])
def test_a_gdn_layer_with_hooks_is_not_fused(model, kind, monkeypatch):
    """Fusion is an optimisation: a GDN layer's forward hooks, an instance-level forward and a
    backward hook (kept through the forward call) still see it run (fuse_gdn=True included),
    with the same result."""
    seen = []
    gdn = model.g_a[1]
    if kind == "hook":
        h = gdn.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    elif kind == "pre_hook":
        h = gdn.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
    elif kind == "global_hook":
        h = torch.nn.modules.module.register_module_forward_hook(
            lambda m, a, out: seen.append(out.shape) if m is gdn else None)
    elif kind == "instance_forward":
        real = type(gdn).forward.__get__(gdn)
        gdn.forward = lambda *a, **k: seen.append(1) or real(*a, **k)
        h = _Removable(lambda: gdn.__dict__.pop("forward"))
    else:   # (the hook wraps the call's output: the call must happen)
        h = gdn.register_full_backward_hook(lambda m, gi, go: None)
        real = type(gdn).forward
        counted = lambda self, *a, **k: (self is gdn and seen.append(1)) or real(self, *a, **k)
        monkeypatch.setattr(type(gdn), "forward", counted)
        monkeypatch.setattr(type(gdn), "_op_forward", counted)   # (so only the hook counts)
    x = torch.rand(1, 3, 16, 16)
    try:
        with torch.no_grad():
            model.g_a.fuse_gdn = True
            y = model.g_a(x, 12)
            assert len(seen) == 1
    finally:
        h.remove()
        model.g_a.__dict__.pop("fuse_gdn", None)
    with torch.no_grad():
        model.g_a.fuse_gdn = False
        try:
            torch.testing.assert_close(y, model.g_a(x, 12), rtol=0, atol=0)
        finally:
            model.g_a.__dict__.pop("fuse_gdn", None)


def test_a_gdn_subclass_or_patch_with_its_own_forward_is_not_fused(model, monkeypatch):
    """The fused conv + GDN computes what SlimGDN.forward does: a subclass overriding forward,
    or a forward patched onto the class, runs as its own call."""
    from slimkernels import _hooks
    gdn = model.g_a[1]
    assert not _hooks.runs_more_than_forward(gdn)
    seen = []

    class Logged(type(gdn)):
        def forward(self, x, width=None):
            seen.append(1)
            return super().forward(x, width)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        model.g_a.fuse_gdn = True
        try:
            ref = model.g_a(x, 12)
            monkeypatch.setattr(gdn, "__class__", Logged)
            assert _hooks.runs_more_than_forward(gdn)
            assert torch.equal(model.g_a(x, 12), ref) and seen == [1]
            monkeypatch.undo()
            real = type(gdn).forward
            monkeypatch.setattr(type(gdn), "forward",
                                lambda self, *a, **k: seen.append(2) or real(self, *a, **k))
            assert torch.equal(model.g_a(x, 12), ref) and seen == [1, 2]
        finally:
            model.g_a.__dict__.pop("fuse_gdn", None)


def test_conversions_that_swap_tensors_work_after_coding(model):
    """The weight caches keep no weak references, which torch.utils.swap_tensors refuses
    (Module._apply swaps with set_swap_module_params_on_conversion(True))."""
    m = Tiny().eval()
    m.load_state_dict(model.state_dict())
    m.update()
    x = torch.rand(1, 3, 16, 16)
    ref = {p: m.compress(x, 8, precision=p) for p in ("fp32", "bf16")}
    m.decompress(ref["bf16"])
    was = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m.to(torch.float64).float()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(was)
    assert {p: m.compress(x, 8, precision=p) for p in ("fp32", "bf16")} == ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_quantize_matches_the_entropy_model(model, dtype, channels_last):
    from slimkernels.codec import _quantize
    eb = model.entropy_bottleneck.for_width(12)
    y = (torch.randn(1, 12, 5, 7, dtype=torch.float64) * 6).to(dtype)
    y.view(-1)[:4] = torch.tensor([0.5, -0.5, 2.5, -3.5], dtype=dtype)   # ties (half to even)
    m = float(eb.medians()[4])
    y[0, 4, 0, 0] = m + 0.5 + 2.0 ** -40 if dtype == torch.float64 else y[0, 4, 0, 0]
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    got = _quantize(eb, y)
    assert got.dtype == torch.int32 and got.is_contiguous()
    assert torch.equal(got, eb.quantize_symbols(y))


def test_dequantize_matches_the_entropy_model(model):
    from slimkernels.codec import _dequantize
    eb = model.entropy_bottleneck.for_width(8)
    sym = torch.randint(-300, 300, (1, 8, 3, 5), dtype=torch.int32)
    sym.view(-1)[:2] = torch.tensor([(1 << 24) - 1, -(1 << 24) + 1], dtype=torch.int32)
    got = _dequantize(eb, sym)
    assert got.dtype == torch.float32 and torch.equal(got, eb.dequantize_symbols(sym))


def test_auto_streams(model, monkeypatch):
    from slimkernels import codec
    n = codec.STREAM_MIN_SYMBOLS
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert [codec.auto_streams(k) for k in (0, n - 1, n, 2 * n - 1, 2 * n, 9 * n)] == \
            [1, 1, 1, 1, 2, 2]
        torch.set_num_threads(1)
        assert codec.auto_streams(9 * n) == 1
        monkeypatch.setattr(codec, "STREAM_MIN_SYMBOLS", 16)   # a small image, several streams
        torch.set_num_threads(3)
        x = torch.rand(1, 3, 32, 32)                             # 12 x 8 x 8 = 768 symbols
        data = model.compress(x, 12, precision="fp32")
        f = container.unpack(data)
        from slimkernels import coding
        assert f.streams == 3 == coding.stream_count(f.payload)
        torch.testing.assert_close(model.decompress(data, precision="fp32"),
                                   model.decompress(model.compress(x, 12, precision="fp32",
                                                                   streams=1), precision="fp32"),
                                   rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)


def test_coder_pool_choice_and_same_bytes(model, monkeypatch):
    """compress / decompress give the coder torch's OpenMP threads where torch runs on OpenMP and
    slimkernels._cpu_kernels is built, else the coder's own pool; the bytes do not change."""
    from slimkernels import codec, coding
    on_omp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
    want = "openmp" if on_omp and coding.openmp_pool_available() else "coder"
    assert codec.coder_pool() == want
    monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")          # the switch of every CPU kernel
    assert codec.coder_pool() == "coder"
    monkeypatch.delenv("SLIMKERNELS_CPU_KERNELS")
    seen = []
    real_encode, real_decode = coding.encode_prepared, coding.decode_prepared
    monkeypatch.setattr(coding, "encode_prepared", lambda *a: seen.append(a[9]) or
                        real_encode(*a))
    monkeypatch.setattr(coding, "decode_prepared", lambda *a: seen.append(a[9]) or
                        real_decode(*a))
    monkeypatch.setattr(codec, "STREAM_MIN_SYMBOLS", 16)        # several substreams
    x = torch.rand(1, 3, 32, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        data = model.compress(x, 12, precision="fp32")
        assert container.unpack(data).streams == 2
        out = model.decompress(data, precision="fp32")
        assert seen == [want, want]
        monkeypatch.setattr(codec, "coder_pool", lambda: "coder")
        assert model.compress(x, 12, precision="fp32") == data
        torch.testing.assert_close(model.decompress(data, precision="fp32"), out, rtol=0, atol=0)
        assert seen[2:] == ["coder", "coder"]
    finally:
        torch.set_num_threads(threads)


def test_decompress_checks_the_symbols_range_only_when_the_decoder_saw_escapes(model,
                                                                              monkeypatch):
    """The pass over the decoded symbols (_beyond_support: are they beyond every table?) runs
    only for a file with escaped symbols; a file compress wrote of an ordinary image has none,
    and its image is the same either way."""
    import dataclasses

    import numpy as np

    from slimkernels import codec, coding
    calls = []
    real = codec._beyond_support
    monkeypatch.setattr(codec, "_beyond_support", lambda *a: calls.append(1) or real(*a))
    x = torch.rand(1, 3, 32, 48)
    data = model.compress(x, 12, precision="fp32")
    y = model.decompress(data, precision="fp32")
    assert calls == []
    f = container.unpack(data)
    eb = model.entropy_bottleneck.for_width(12)
    _, cdfs, lengths, offsets, idx = model._latent_plan(eb, 12)
    sym = model.decompress_latent(data)[1].numpy().copy()
    sym[0, 3, 1, 2] = int(offsets[3]) + int(lengths[3]) + 5       # one escape
    forged = container.pack(dataclasses.replace(f, payload=coding.encode(
        sym, idx, cdfs, lengths, offsets, precision=eb.precision)))
    y2 = model.decompress(forged, precision="fp32")
    assert calls == [1] and y2.shape == y.shape and bool(torch.isfinite(y2).all())


def test_compress_gives_the_coder_halves_threads_only_on_the_openmp_pool(model, monkeypatch):
    """One substream gets all of torch's threads on the OpenMP pool (its lanes coded in halves,
    the same bytes) but one thread per substream on the coder's own pool, whose workers sleep
    during the transform (waking one for a half cost more than it saved)."""
    from slimkernels import codec, coding
    seen = []
    real_encode = coding.encode_prepared
    monkeypatch.setattr(coding, "encode_prepared", lambda *a: seen.append((a[7], a[8], a[9])) or
                        real_encode(*a))
    x = torch.rand(1, 3, 32, 32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert codec.coder_encode_threads("openmp", 1) == 2
        assert codec.coder_encode_threads("coder", 1) == 1
        assert codec.coder_encode_threads("coder", 3) == 2
        for pool in ("openmp", "coder"):
            monkeypatch.setattr(codec, "coder_pool", lambda pool=pool: pool)
            data = model.compress(x, 12, precision="fp32", streams=1)
            assert seen[-1] == (1, 2 if pool == "openmp" else 1, pool)
            assert data == model.compress(x, 12, precision="fp32", streams=1)
        monkeypatch.setattr(codec, "coder_pool", lambda: "coder")
        model.compress(x, 12, precision="fp32", streams=2)
        assert seen[-1] == (2, 2, "coder")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_decompress_in_forked_child_with_one_torch_thread(model):
    """A worker process fork()ed from a process that coded (DataLoader-style, torch at 1 thread)
    decompresses a 2-substream file: the coder must not enter OpenMP there."""
    from tests.test_coding_threads import _fork, _wait_child
    x = torch.rand(1, 3, 64, 64)
    data = model.compress(x, 12, precision="fp32", streams=2)
    ref = model.decompress(data, precision="fp32")              # the parent's pools have run
    pid = _fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            out = model.decompress(data, precision="fp32")
            again = model.compress(x, 12, precision="fp32", streams=2)
            code = 0 if torch.equal(out, ref) and again == data else 2
        finally:
            os._exit(code)
    assert _wait_child(pid, timeout=60.0) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_that_keeps_torch_s_threads_codes_instead_of_hanging(tmp_path):
    """(ProcessPoolExecutor()'s default workers, fork()ed from a process that had coded, waited
    for good in their first parallel op, read_image's or compress's: GNU OpenMP cannot run
    threads in such a child.) read_image, load_model, compress and decompress set torch's
    thread count to 1 there, with a RuntimeWarning, and give the parent's results."""
    from PIL import Image

    from slimkernels.io import read_image
    from slimkernels.models import SlimCAE
    from slimkernels.pretrained import load_model, save_model
    from tests.test_coding_threads import _fork, _wait_child
    threads = torch.get_num_threads()
    torch.set_num_threads(2)   # (the parent's OpenMP threads are started below)
    try:
        path, mpath = str(tmp_path / "a.png"), str(tmp_path / "m.pt")
        Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
                        ).save(path)
        torch.manual_seed(0)
        model = SlimCAE([16, 8])
        model.update()
        save_model(model, mpath)
        model = load_model(mpath)
        x = read_image(path)[0]
        data = model.compress(x, 8, streams=1)
        ref = model.decompress(data)
        pid = _fork()
        if pid == 0:
            code = 1
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    xc = read_image(path)[0]
                    same = model.compress(xc, 8, streams=1) == data and \
                        torch.equal(model.decompress(data), ref) and \
                        load_model(mpath).compress(xc, 8, streams=1) == data
                said = [str(w.message) for w in caught if w.category is RuntimeWarning]
                code = 0 if same and torch.get_num_threads() == 1 and len(said) == 1 and \
                    "read_image: this process was fork()ed" in said[0] and "from 2 to 1" in \
                    said[0] else 2
            finally:
                os._exit(code)
        assert _wait_child(pid, timeout=120.0) == 0   # ("timeout": the child hung)
        assert torch.get_num_threads() == 2   # (the parent's own count is left alone)
    finally:
        torch.set_num_threads(threads)


def test_native_bf16_fallbacks(monkeypatch):
    """Older torch (no get_capabilities, no probe) falls back to the /proc/cpuinfo flags; no
    oneDNN means no native bf16; a probe that raises is skipped."""
    from slimkernels import codec
    flags = _cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo")
    expect = bool({"amx_bf16", "avx512_bf16"} & flags)
    try:
        monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported",
                            lambda: (_ for _ in ()).throw(RuntimeError("old build")),
                            raising=False)
        codec._cpu_native_bf16.cache_clear()
        assert codec._cpu_native_bf16() == (expect and torch.backends.mkldnn.is_available())
        monkeypatch.setattr(codec, "_cpu_flags", lambda: {"fpu", "avx2"})
        codec._cpu_native_bf16.cache_clear()
        assert codec._cpu_native_bf16() is False
        monkeypatch.setattr(codec, "_cpu_flags", lambda: {"fpu", "amx_bf16"})
        codec._cpu_native_bf16.cache_clear()
        assert codec._cpu_native_bf16() is torch.backends.mkldnn.is_available()
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        codec._cpu_native_bf16.cache_clear()
        assert codec._cpu_native_bf16() is False
    finally:
        monkeypatch.undo()
        codec._cpu_native_bf16.cache_clear()
    assert codec.native_bf16("cpu") == (expect and torch.backends.mkldnn.is_available())


def _torch_quantize(y, m):
    # the reference: fp32 subtraction, round half to even, int32 cast (NCHW)
    return torch.sub(y.float() if y.dtype != torch.float32 else y, m.view(1, -1, 1, 1)).round_() \
        .to(torch.int32, memory_format=torch.contiguous_format)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(1, 48, 32, 48), (2, 37, 5, 19), (1, 16, 1, 16), (1, 1, 3, 3), (1, 24, 3, 40),
                                   (1, 192, 2, 33)])
def test_quantize_kernel_equals_the_torch_passes(dtype, channels_last, shape):
    from slimkernels import codec
    ck = codec._latent_kernels()
    if ck is None:
        pytest.skip("slimkernels._cpu_kernels without the AVX-512 / AVX2 latent quantization here")
    g = torch.Generator().manual_seed(sum(shape))
    C = shape[1]
    m = torch.randn(C, generator=g) * 3

    class EB:
        def medians(self):
            return m
    y = (torch.randn(*shape, generator=g, dtype=torch.float64) * 20).to(dtype)
    flat = y.view(-1)
    # ties after the median shift, both parities, and values the int32 cast cannot hold
    ties = (m[0] + torch.tensor([0.5, 1.5, -0.5, -2.5])).to(dtype)
    flat[:4] = ties[: flat.numel()][:4] if flat.numel() >= 4 else flat[:4]
    if flat.numel() > 8:
        flat[5:9] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e9], dtype=dtype)
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    got, invalid = codec._quantize_counted(EB(), y)
    want = _torch_quantize(y, m)
    assert got.dtype == torch.int32 and got.is_contiguous() and got.shape == y.shape
    assert torch.equal(got, want)
    # the count of INT32_MIN symbols comes from the same pass
    assert invalid == int((want == torch.iinfo(torch.int32).min).sum())
    assert (invalid >= 4) == (flat.numel() > 8)
    # compress's form: a C-contiguous numpy int32 array, the same symbols and count
    arr, invalid_np = codec._quantize_counted(EB(), y, as_numpy=True)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.int32 and arr.flags.c_contiguous
    assert arr.shape == tuple(y.shape) and invalid_np == invalid
    assert np.array_equal(arr, want.numpy())
    if codec._latent_kernels() is not None:
        ck = codec._latent_kernels()
        with pytest.raises(ValueError, match="negative or too large a size"):
            ck.quantize_latents_array(y.data_ptr(), 0, False, 1, -1, 1, 1, m.data_ptr(), 1)
        # sizes whose product overflows: refused before numpy's array (pybind's stride product
        # overflowed), and by the raw kernels (a product that wrapped to 0 had returned "ok")
        with pytest.raises(ValueError, match="negative or too large a size"):
            ck.quantize_latents_array(y.data_ptr(), 0, False, 2 ** 31, 2 ** 31, 2 ** 31, 2 ** 31,
                                      m.data_ptr(), 1)
        out = torch.empty(4, dtype=torch.int32)
        with pytest.raises(RuntimeError, match="negative or overflowing size"):
            ck.quantize_latents(y.data_ptr(), 0, False, 2 ** 32, 2 ** 32, 1, 1, m.data_ptr(),
                                out.data_ptr(), 1)
        with pytest.raises(RuntimeError, match="negative or overflowing size"):
            ck.dequantize_latents(out.data_ptr(), 2 ** 40, 2 ** 40, 2 ** 40, 2 ** 40,
                                  m.data_ptr(), y.data_ptr(), 1, 0)


@pytest.mark.parametrize("shape", [(1, 48, 32, 48), (2, 37, 5, 19), (1, 192, 2, 33), (1, 24, 3, 40)])
def test_dequantize_kernel_equals_the_torch_addition(shape):
    from slimkernels import codec
    if codec._latent_kernels() is None:
        pytest.skip("slimkernels._cpu_kernels without the AVX-512 / AVX2 latent quantization here")
    g = torch.Generator().manual_seed(sum(shape))
    m = torch.randn(shape[1], generator=g) * 3

    class EB:
        def medians(self):
            return m
    sym = torch.randint(-500, 500, shape, generator=g, dtype=torch.int32)
    sym.view(-1)[:2] = torch.tensor([(1 << 24) + 1, -(1 << 30)], dtype=torch.int32)
    got = codec._dequantize(EB(), sym, channels_last=True)
    ref = torch.add(sym, m.view(1, -1, 1, 1))
    assert got.is_contiguous(memory_format=torch.channels_last) and got.dtype == torch.float32
    assert torch.equal(got, ref)
    assert torch.equal(codec._dequantize(EB(), sym), ref) and codec._dequantize(EB(), sym) \
        .is_contiguous()
    # bf16 in the same pass: torch's rounding of the float32 sum, ties (channel 0's median 0:
    # 257, 259, -257, 1025 are halfway between bf16 neighbours) included
    m[0] = 0.0
    sym.view(-1)[2:6] = torch.tensor([257, 259, -257, 1025], dtype=torch.int32)
    ref = torch.add(sym, m.view(1, -1, 1, 1))
    got = codec._dequantize(EB(), sym, True, dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, ref.to(torch.bfloat16))
    assert torch.equal(codec._dequantize(EB(), sym, dtype=torch.bfloat16), ref.to(torch.bfloat16))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        codec._dequantize(EB(), sym, dtype=torch.float16)


def test_quantize_falls_back_without_the_kernel(monkeypatch, model):
    from slimkernels import codec
    eb = model.entropy_bottleneck.for_width(12)
    y = (torch.randn(1, 12, 6, 7) * 5).contiguous(memory_format=torch.channels_last)
    y[0, 3, 2, 4] = float("nan")
    want, n_want = codec._quantize_counted(eb, y)
    monkeypatch.setattr(codec, "_latent_kernels", lambda: None)
    got, n_got = codec._quantize_counted(eb, y)
    assert torch.equal(got, want) and n_got == n_want == 1
    arr, n_arr = codec._quantize_counted(eb, y, as_numpy=True)
    assert isinstance(arr, np.ndarray) and np.array_equal(arr, want.numpy()) and n_arr == 1
    with pytest.raises(ValueError, match="quantize_symbols: y has NaN, inf"):
        eb.quantize_symbols(y)            # the public method refuses what the codec counts
    y[0, 3, 2, 4] = 0.25
    assert torch.equal(codec._quantize(eb, y), eb.quantize_symbols(y))


def test_env_switch_turns_every_cpu_kernel_off(monkeypatch, model):
    # SLIMKERNELS_CPU_KERNELS=0: latent quantization, the direct AMX conv and the fused GDN all
    # take their PyTorch paths, with the same symbols
    from slimkernels import codec
    from slimkernels.ops import conv as conv_ops
    import importlib
    gdn_mod = importlib.import_module("slimkernels.ops.gdn")
    x = torch.rand(1, 3, 32, 48)
    data = model.compress(x, 12, precision="fp32")
    monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")
    assert codec._latent_kernels() is None and conv_ops._amx_conv_kernels() is None
    assert not gdn_mod.cpu_kernels_available()
    assert model.compress(x, 12, precision="fp32") == data


@pytest.mark.parametrize("shape", [(1, 3, 0, 5), (1, 3, 7, 0), (3, 0, 0)])
def test_compress_refuses_an_empty_image(model, shape):
    with pytest.raises(ValueError, match="at least 1x1 pixels"):
        model.compress(torch.rand(shape), 12)


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_compress_refuses_a_non_finite_image(model, bad, kernels, monkeypatch):
    if not kernels:
        monkeypatch.setenv("SLIMKERNELS_CPU_KERNELS", "0")
    x = torch.rand(1, 3, 32, 48)
    x[0, 1, 7, 9] = bad
    with pytest.raises(ValueError, match="not finite"):
        model.compress(x, 12)


@pytest.mark.parametrize("scale,offset,hint", [(255.0, 0.0, True), (1.0, -1.0, False),
                                               (4.0, -1.5, True)])
def test_compress_refuses_values_far_outside_0_1(model, scale, offset, hint):
    # a 0-255 image passed as float (the common mistake), or a [-1, 1]-normalised one
    x = torch.rand(1, 3, 40, 56) * scale + offset
    with pytest.raises(ValueError, match=r"float image in \[0, 1\]; its values reach") as e:
        model.compress(x, 12)
    assert ("divide by 255" in str(e.value)) == hint


def test_compress_accepts_slight_overshoot_and_edge_values(model):
    # resampling overshoot stays within PIXEL_RANGE: coded as given (the decoder clamps)
    from slimkernels.codec import PIXEL_RANGE
    x = torch.rand(1, 3, 40, 56)
    x[..., ::2, ::2] = PIXEL_RANGE[1]
    x[..., 1::2, 1::2] = PIXEL_RANGE[0]
    y = model.decompress(model.compress(x, 12))
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    x[0, 1, 17, 33] = PIXEL_RANGE[1] + 0.01               # one value just past it: refused
    with pytest.raises(ValueError, match="values reach"):
        model.compress(x, 12)


@pytest.mark.parametrize("layout, as_is", [("nchw", False), ("channels_last", True),
                                           ("channels_last", False)])
def test_compress_checks_every_value_in_the_bf16_cast(model, monkeypatch, layout, as_is):
    """On CPU in bf16 the image's cast to the transform's input measures the range of every value
    (image_to_bf16 with_range), or the range pass of an image the transform takes as it is
    (CPU_IMAGE_AS_IS, channels_last): a value anywhere is refused, a NaN there is reported as
    not finite, and no range pass of its own runs."""
    from slimkernels import codec
    from slimkernels.ops import image_io
    if image_io._kernels() is None:
        pytest.skip("no AVX-512 image cast here: the range pass of its own runs")
    monkeypatch.setattr(codec, "CPU_IMAGE_AS_IS", as_is)
    x = torch.rand(1, 3, 256, 256)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        from slimkernels.ops.conv import amx_conv_available
        if as_is and amx_conv_available():       # (the image goes as it is: no cast at all)
            monkeypatch.setattr(codec, "image_to_bf16", lambda *a, **k: pytest.fail("cast"))

    def own_pass(_x):
        raise AssertionError("the pixel-range pass of its own ran")
    monkeypatch.setattr(codec, "_check_pixel_range", own_pass)
    data = model.compress(x, 12, precision="bf16")
    assert model.decompress(data).shape == x.shape
    for bad, match in ((200.0, r"values reach \S+ \.\. 200 \(0-255"), (float("nan"), "not finite"),
                       (-float("inf"), "not finite")):
        y = x.clone(memory_format=torch.channels_last if layout == "channels_last"
                    else torch.contiguous_format)
        y[0, 2, 129, 131] = bad
        with pytest.raises(ValueError, match=match):
            model.compress(y, 12, precision="bf16")
    # fp32: no bf16 cast, so the pass of its own runs (and raises here, as patched)
    with pytest.raises(AssertionError, match="pass of its own"):
        model.compress(x, 12, precision="fp32")


def _image_layouts(x):
    """``x`` [1, 3, H, W] in the layouts compress takes: NCHW, dense channels_last, a
    non-dense view (a crop of a larger image) and float64."""
    big = torch.zeros(1, 3, x.shape[2] + 3, x.shape[3] + 5)
    big[..., 1:-2, 2:-3] = x
    return {"nchw": x.contiguous(), "channels_last": x.contiguous(memory_format=torch.channels_last),
            "crop": big[..., 1:-2, 2:-3], "float64": x.double()}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compress_checks_every_value_in_every_precision_and_layout(model, precision):
    """Every value of the image is range-checked whatever the precision and layout (fp32 had
    checked a sample of ~12k values: one 0-255 pixel off its grid was coded in fp32 and refused
    in bf16: here every 2nd row and 3rd column). The bad value sits in odd rows, off that
    grid."""
    x = torch.rand(1, 3, 131, 197)
    for layout, xl in _image_layouts(x).items():
        data = model.compress(xl, 12, precision=precision)   # a good image: coded
        assert model.decompress(data).shape == (1, 3, 131, 197), layout
        for k, (bad, match) in enumerate(((200.0, r"values reach \S+ \.\. 200 \(0-255"),
                                          (-0.51, r"values reach -0\.51 \.\. "),
                                          (float("nan"), "not finite"),
                                          (float("inf"), "not finite"))):
            for c, h, w in ((k % 3, 1 + 14 * k, 4 + 17 * k), (2, 129, 196)):
                y = x.clone()
                y[0, c, h, w] = bad
                with pytest.raises(ValueError, match=match):
                    model.compress(_image_layouts(y)[layout], 12, precision=precision)


def test_check_pixel_range_reads_every_value():
    from slimkernels.codec import _check_pixel_range
    x = torch.rand(1, 3, 300, 301)
    for layout, xl in _image_layouts(x).items():
        _check_pixel_range(xl)
        for bad in (1.6, -0.6, float("nan")):
            y = x.clone()
            y[0, 1, 151, 299] = bad
            with pytest.raises(ValueError):
                _check_pixel_range(_image_layouts(y)[layout])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_coding_a_model_converted_from_float32_says_what_to_do(model, dtype):
    import copy
    data = model.compress(torch.rand(1, 3, 16, 16), 12)
    m = copy.deepcopy(model).to(dtype)
    for call in (lambda: m.compress(torch.rand(1, 3, 16, 16), 12), lambda: m.decompress(data)):
        with pytest.raises(ValueError, match=r"weights in float32, got .*model\.float\(\)"):
            call()
    m.float()        # back to float32: float64 kept the weights exactly (the same model, its
    if dtype == torch.float64:                      # files decode); fp16 / bf16 rounded them
        assert m.decompress(data).shape == (1, 3, 16, 16)
    else:
        with pytest.raises(ValueError, match="written with a different model"):
            m.decompress(data)


def test_slim_sequential_calls_plain_layers_without_the_width():
    # activations and plain torch layers take only x; layers with forward(x, width) get the width
    import torch.nn as nn

    class Probe(nn.Module):
        def forward(self, x, width=None):
            self.seen = width
            return x

    probe = Probe()
    g = SlimSequential(SlimConv2d(3, 8, 3, 1, 1, widths=[8, 4]), nn.LeakyReLU(0.5), probe,
                       nn.Conv2d(4, 2, 1), nn.Identity())
    x = torch.randn(1, 3, 5, 5)
    y = g(x, 4)
    assert probe.seen == 4 and y.shape == (1, 2, 5, 5)
    ref = g[3](torch.nn.functional.leaky_relu(g[0](x, 4), 0.5))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_codec_without_parameters_says_what_to_build():
    class Empty(SlimCodec):
        def config(self):
            return {}
    with pytest.raises(ValueError, match="Empty has no parameters: build its g_a, g_s"):
        Empty([8]).compress(torch.rand(1, 3, 8, 8))


def test_clear_caches_after_data_writes(model):
    """Writes through .data bypass version counters: clear_caches() drops every cache built from
    the weights (prepacked convs, effective GDN parameters, model id), so the next call sees the
    new weights."""
    import copy
    m = copy.deepcopy(model)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        before = m.compress(x, 12, precision="fp32")
        id_before = m.model_id()
        for p in m.g_a.parameters():
            p.data.mul_(0.5)                      # no version bump
        m.clear_caches()
        after = m.compress(x, 12, precision="fp32")
    assert m.model_id() != id_before
    fresh = copy.deepcopy(m)                      # a copy has no caches
    assert fresh.compress(x, 12, precision="fp32") == after != before
    # the entropy model's medians too: a .data write is seen after clear_caches()
    eb = m.entropy_bottleneck.for_width(12)
    with torch.no_grad():
        eb.quantiles.data[:, 0, 1] += 3.0
        stale = m.compress(x, 12, precision="fp32")
        m.clear_caches()
        moved = m.compress(x, 12, precision="fp32")
    # before clear_caches() a .data write is undefined territory (the docs say so): the cached
    # model id is stale everywhere, the medians only where the AVX-512 quantize path caches them
    assert stale[:22] == after[:22]
    assert after != moved
    assert copy.deepcopy(m).compress(x, 12, precision="fp32") == moved


def test_crafted_files_with_valid_checksums_are_refused_without_huge_allocations(model):
    """container.pack writes valid checksums, so these reach the coder: a forged image size (up
    to MAX_SIDE x MAX_SIDE: a 12 x 65536 x 65536 latent) or a damaged payload must raise a
    ValueError (SlimFormatError is one) quickly, not allocate for the claimed size."""
    import dataclasses
    import random
    import time
    x = torch.rand(1, 3, 24, 20)
    f = container.unpack(model.compress(x, 12, precision="fp32"))
    side = container.MAX_SIDE
    forged = [dataclasses.replace(f, height=side, img_width=side),
              dataclasses.replace(f, height=f.height + 4),
              dataclasses.replace(f, width=8)]
    rng = random.Random(0)
    for _ in range(40):
        p = bytearray(f.payload)
        for _ in range(rng.randint(1, 4)):
            p[rng.randrange(len(p))] ^= 1 << rng.randrange(8)
        forged.append(dataclasses.replace(f, payload=bytes(p)))
    forged.append(dataclasses.replace(f, payload=f.payload[:rng.randrange(len(f.payload))]))
    t0 = time.perf_counter()
    for g in forged:
        try:
            y = model.decompress(container.pack(g), precision="fp32")
        except ValueError:
            continue
        assert y.shape == (1, 3, g.height, g.img_width)    # a flip that still decodes
    assert time.perf_counter() - t0 < 60


def test_compress_and_decompress_from_several_threads(model):
    """One model shared by threads (a server): every call gives the bytes and images of the same
    call made alone, while the caches (prepacked convs, GDN parameters, medians, tables, model
    id, the coder's table cache and worker pool) are shared."""
    from tests._threads import run_in_threads
    xs = [torch.rand(1, 3, 20 + 4 * k, 28 - 4 * k) for k in range(4)]
    jobs = [(x, w, s) for x in xs for w in model.widths for s in (1, 2)]
    with torch.no_grad():
        ref = [model.compress(x, w, precision="fp32", streams=s) for x, w, s in jobs]
        ref_img = [model.decompress(d, precision="fp32") for d in ref]

    def work(k):
        errors = []
        for i in range(3 * len(jobs)):
            j = (k * 5 + i) % len(jobs)
            x, w, s = jobs[j]
            with torch.no_grad():
                d = model.compress(x, w, precision="fp32", streams=s)
                y = model.decompress(d, precision="fp32")
            if d != ref[j] or not torch.equal(y, ref_img[j]):
                errors.append(j)
        return errors
    assert not run_in_threads(work, 4)


# -- forward_widths: the joint training forward with a shared first layer ------------------------
class _PerWidth(torch.nn.Module):
    """The same model without forward_widths: rd_loss calls it once per width."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, w):
        return self.m(x, w)


def _three_widths(seed=3):
    torch.manual_seed(seed)
    return Tiny(widths=(12, 8, 5))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_forward_widths_is_forward_per_width(channels_last, train):
    """Same x_hat and likelihoods as one forward per width (train mode: same noise draws from the
    same seed), in the order given, duplicates included."""
    m = _three_widths().train(train)
    x = torch.rand(2, 3, 16, 20)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ws = [8, 12, 5, 8]
    torch.manual_seed(7)
    got = m.forward_widths(x, ws)
    torch.manual_seed(7)
    ref = [m(x, w) for w in ws]
    assert len(got) == len(ws)
    for g, r, w in zip(got, ref, ws):
        assert g["likelihoods"]["y"].shape[1] == w
        for a, b in ((g["x_hat"], r["x_hat"]), (g["likelihoods"]["y"], r["likelihoods"]["y"])):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_forward_widths_gradients_equal_per_width_training():
    """rd_loss through forward_widths: the same loss and parameter gradients (fp32 ~1e-5) as
    the per-width forwards."""
    from slimkernels.training.trainer import rd_loss
    m = _three_widths().train()
    x = torch.rand(2, 3, 16, 16)
    grads, losses = [], []
    for which in (m, _PerWidth(m)):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        loss, _ = rd_loss(which, x, m.widths, [0.02, 0.01, 0.005], False)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert grads[0].keys() == grads[1].keys() and "g_a.0.weight" in grads[0]
    for n in grads[1]:
        # fp32 ~1e-5 relative to the gradient's scale: the two orders of summation differ, and an
        # element near zero of a gradient of magnitude ~2 moves by a few 1e-7 (seen on the AMX Xeon)
        ref = grads[1][n]
        assert torch.isfinite(grads[0][n]).all()
        torch.testing.assert_close(grads[0][n], ref, rtol=1e-5,
                                   atol=1e-5 * float(ref.abs().max()) + 1e-12)


def _count_first_layer_calls(m, fn):
    calls = []
    h = m.g_a[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        fn()
    finally:
        h.remove()
    return len(calls)


def test_forward_widths_runs_the_first_layer_once_unless_fused(monkeypatch):
    m = _three_widths()
    x = torch.rand(1, 3, 8, 8)
    assert _count_first_layer_calls(m, lambda: m.forward_widths(x, m.widths)) == 1
    # a g_a that fuses the first conv with its GDN (the Triton backend) keeps one call per width
    monkeypatch.setattr(m.g_a, "fuse_gdn", True, raising=False)
    assert _count_first_layer_calls(m, lambda: m.forward_widths(x, m.widths)) == 3


def test_forward_widths_keeps_an_overridden_forward():
    """A subclass with its own forward gets one forward per width (its forward, not the base
    class's)."""
    class Scaled(Tiny):
        def forward(self, x, width=None):
            out = super().forward(x, width)
            return {**out, "x_hat": out["x_hat"] * 0.5}

    torch.manual_seed(3)
    m = Scaled(widths=(12, 8, 5)).eval()
    x = torch.rand(1, 3, 8, 8)
    outs = m.forward_widths(x, [12, 5])
    assert _count_first_layer_calls(m, lambda: m.forward_widths(x, m.widths)) == 3
    for o, w in zip(outs, [12, 5]):
        torch.testing.assert_close(o["x_hat"], m(x, w)["x_hat"])


def test_mixed_quantization_trains_the_decoder_on_what_it_decodes():
    """forward(x, w, "mixed") in training mode: x_hat is the decoder on the median-rounded latent
    (what decompress decodes), the likelihoods those of noise mode (same draws); forward_widths
    gives the same per width; rd_loss's gradients reach g_a through the rounding."""
    from slimkernels.training.trainer import rd_loss
    m = _three_widths().train()
    x = torch.rand(2, 3, 16, 16)
    ws = [12, 5, 8]
    torch.manual_seed(5)
    got = m.forward_widths(x, ws, "mixed")
    for g, w in zip(got, ws):
        torch.manual_seed(5)   # (each forward draws the same noise: compare the rate per width)
        ref = m(x, w, "mixed")
        torch.manual_seed(5)
        noise = m(x, w)
        y = m.encode(x, w)
        eb = m.entropy_bottleneck.for_width(w)
        med = eb.medians().view(1, -1, 1, 1)
        rounded = m.decode(torch.round(y - med) + med)
        for a in (g["x_hat"], ref["x_hat"]):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, rounded, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ref["likelihoods"]["y"], noise["likelihoods"]["y"],
                                   rtol=0, atol=0)
        assert not torch.allclose(ref["x_hat"], noise["x_hat"])
    m.zero_grad(set_to_none=True)
    loss, _ = rd_loss(m, x, m.widths, [0.02, 0.01, 0.005], False, "mixed")
    loss.backward()
    assert torch.isfinite(loss) and m.g_a[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="quantization must be one of noise, mixed"):
        m.forward_widths(x, ws, "hard")
    with pytest.raises(ValueError, match="needs a model with forward_widths"):
        rd_loss(_PerWidth(m), x, m.widths, [0.02, 0.01, 0.005], False, "mixed")


def test_forward_widths_bad_input_is_refused():
    m = _three_widths()
    with pytest.raises(ValueError, match="not one of this model's widths"):
        m.forward_widths(torch.rand(1, 3, 8, 8), [12, 7])
    with pytest.raises(ValueError, match="RGB"):
        m.forward_widths(torch.rand(1, 4, 8, 8), [12, 8])


@pytest.mark.parametrize("channels_last", [False, True])
def test_width_slices_gradcheck(channels_last):
    """The slices' backward (gradients summed into the first k channels) in float64."""
    from slimkernels.codec import _WidthSlices
    h = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    h.requires_grad_()
    outs = _WidthSlices.apply(h, 4, 2)
    assert [o.shape[1] for o in outs] == [4, 2]
    assert all(o.is_contiguous(memory_format=torch.channels_last) == channels_last for o in outs)
    assert torch.autograd.gradcheck(lambda t: _WidthSlices.apply(t, 4, 2, 1), (h,))


def _cross_device(device, width):
    """The bundled model on ``device`` and on the CPU: same model id, each decodes the other's
    files to the same latents and reconstructs within float noise of it (fp32; TF32 is off on a
    GPU in tests, tests/conftest.py); the two encoders' latents differ at most by rare rounding
    flips at .5 boundaries."""
    import os

    from slimkernels.io import read_image
    from slimkernels.pretrained import load_model

    cpu, other = load_model(), load_model(device=device)
    assert cpu.model_id() == other.model_id()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    x, _ = read_image(os.path.join(here, "slimkernels", "assets", "sample.png"))
    for enc, dec in ((other, cpu), (cpu, other)):
        data = enc.compress(x, width, precision="fp32")
        assert torch.equal(enc.decompress_latent(data)[1], dec.decompress_latent(data)[1])
        a = enc.decompress(data, precision="fp32").cpu()
        b = dec.decompress(data, precision="fp32").cpu()
        assert a.shape == b.shape == x.shape
        assert torch.isfinite(a).all() and (a - b).abs().max().item() < 1e-3
    s_other = other.decompress_latent(other.compress(x, width, precision="fp32"))[1]
    s_cpu = cpu.decompress_latent(cpu.compress(x, width, precision="fp32"))[1]
    assert (s_other != s_cpu).float().mean().item() < 1e-3
    assert (s_other - s_cpu).abs().max().item() <= 1


def test_cross_device_check_runs_cpu_to_cpu():
    """The check below, CPU against CPU (here it must hold exactly: same code, same device)."""
    _cross_device("cpu", 48)


@pytest.mark.cuda
@pytest.mark.parametrize("width", [192, 48])
def test_cuda_files_decode_on_cpu_and_cpu_files_on_cuda(width):
    """A file is device-independent: written on a GPU it decodes on the CPU, and back."""
    _cross_device("cuda", width)


def test_model_built_under_inference_mode(model):
    """A model made (or loaded) under torch.inference_mode holds inference tensors, which have no
    version counters for the weight caches and model_id to key by: it still compresses to the
    same bytes, decodes the same image, and its model_id follows a load_state_dict there."""
    x = torch.rand(1, 3, 21, 18, generator=torch.Generator().manual_seed(4))
    data = model.compress(x, 8)
    with torch.inference_mode():
        m = Tiny().eval()
        m.load_state_dict(model.state_dict())
        m.update()
        assert m.compress(x, 8) == data
        assert torch.equal(m.decompress(data), model.decompress(data))
        mid = m.model_id()
        assert mid == model.model_id()
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        sd["g_a.0.weight"] = sd["g_a.0.weight"] * 1.01
        m.load_state_dict(sd)
        assert m.model_id() != mid


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_cpu_codec_ignores_torchs_default_device(precision):
    """compress / decompress of a CPU model allocate their CPU kernels' outputs on the CPU
    whatever ``torch.set_default_device`` says (here "meta", where a CPU kernel would get a null
    pointer): the same file and image as with the default device left alone."""
    from slimkernels.pretrained import load_model
    m = load_model()
    torch.manual_seed(9)
    x = torch.rand(1, 3, 96, 160)
    want = {w: m.compress(x, w, precision=precision) for w in (48, 192)}
    imgs = {w: m.decompress(d, precision=precision) for w, d in want.items()}
    torch.set_default_device("meta")
    try:
        for w in (48, 192):
            data = m.compress(x, w, precision=precision)
            img = m.decompress(data, precision=precision)
            assert data == want[w]
            assert img.device.type == "cpu" and torch.equal(img, imgs[w])
    finally:
        torch.set_default_device(None)


def test_latent_plan_follows_the_entropy_model(model):
    """compress's cached coding tables (per width, keyed by the weights' state) follow an update
    of the entropy model: the bytes are those of a fresh copy with the same weights."""
    import copy
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(5))
    m = copy.deepcopy(model)
    m.compress(x, 8)
    assert 8 in m._latent_plans[1]
    with torch.no_grad():
        for p in m.entropy_bottleneck.parameters():
            p.mul_(1.05)
    m.update()
    got = m.compress(x, 8)
    fresh = copy.deepcopy(m)
    fresh.clear_caches()
    assert got == fresh.compress(x, 8)
    assert m.decompress(got).shape == (1, 3, 20, 24)


@pytest.mark.parametrize("streams", [0, 256, 1.5, True, "2"])
def test_compress_refuses_bad_stream_counts(model, streams):
    with pytest.raises(ValueError, match="streams"):
        model.compress(torch.rand(1, 3, 16, 16), 8, streams=streams)


def test_compress_takes_numpy_stream_counts(model):
    import numpy as np
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert model.compress(x, 8, streams=np.int64(2)) == model.compress(x, 8, streams=2)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_decompress_takes_the_image_from_the_last_layer(model, monkeypatch, precision):
    """On CPU the synthesis transform's last layer gives the clamped float32 image itself
    (out_clamp): the image of decode + clamp, bit for bit."""
    x = torch.rand(1, 3, 30, 41, generator=torch.Generator().manual_seed(60))
    data = model.compress(x, 12, precision=precision)
    from slimkernels.ops import conv as conv_ops
    taken = precision == "bf16" and conv_ops._amx_conv_kernels() is not None   # (AMX CPUs)
    assert model._decodes_image(12, precision) == taken
    calls = []
    real = model._decode_image
    monkeypatch.setattr(model, "_decode_image", lambda y: calls.append(1) or real(y),
                        raising=False)
    img = model.decompress(data, precision=precision)
    assert calls == ([1] if taken else [])
    monkeypatch.setattr(model, "_decodes_image", lambda w, p: False, raising=False)
    ref = model.decompress(data, precision=precision)
    assert len(calls) == int(taken)                          # the two-pass path
    assert img.dtype == torch.float32 and img.shape == ref.shape == (1, 3, 30, 41)
    assert torch.equal(img, ref)


def test_a_hooked_or_overridden_last_layer_keeps_the_two_pass_image(model):
    """A forward hook on the last layer sees its own output, not the clamped image; a codec with
    its own decode is decoded by it."""
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(61))
    data = model.compress(x, 12, precision="fp32")
    plain = model.decompress(data, precision="fp32")
    seen = []

    def shift(m, a, out):   # sees the layer's own output and replaces it
        seen.append(out)
        return out - 1.0
    h = model.g_s[-1].register_forward_hook(shift)
    try:
        assert not model._decodes_image(12, "bf16")
        img = model.decompress(data, precision="fp32")
    finally:
        h.remove()
    assert len(seen) == 1 and seen[0].dtype == torch.float32
    assert torch.equal(plain, seen[0].clamp(0, 1)) and plain.max() > 0
    assert torch.equal(img, (seen[0] - 1.0).clamp(0, 1)) and img.max() == 0

    class Halved(Tiny):
        def decode(self, y_hat):
            return super().decode(y_hat) * 0.5
    assert not Halved()._decodes_image(12, "bf16")


def test_the_image_from_the_last_layer_only_where_it_adds_no_memory():
    from slimkernels.models import SlimCAE
    from slimkernels.ops import conv as conv_ops
    m = SlimCAE(widths=(96, 72, 48, 16))
    # the 9x9/4 output layer onto 3 channels: its input holds width / 16 values per output one;
    # bf16 on the direct AMX kernel only
    amx = conv_ops._amx_conv_kernels() is not None
    assert [m._decodes_image(w, "bf16") for w in (96, 72, 48, 16)] == \
        [False, False, amx, amx]
    assert not any(m._decodes_image(w, "fp32") for w in (96, 72, 48, 16))


def test_slim_sequential_stop_runs_the_layers_before_it(model):
    y = torch.rand(1, 12, 4, 4)
    with torch.no_grad():
        part = model.g_s(y, 12, stop=2)
        manual = model.g_s[1](model.g_s[0](y, 12), 12)
        torch.testing.assert_close(part, manual, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.g_s(part, 12, start=2), model.g_s(y, 12),
                                   rtol=1e-5, atol=1e-6)


def test_cropped_only_when_the_size_differs():
    from slimkernels.codec import _cropped
    img = torch.rand(1, 3, 8, 12)
    assert _cropped(img, 8, 12) is img
    out = _cropped(img, 5, 7)
    assert out.shape == (1, 3, 5, 7) and torch.equal(out, img[..., :5, :7])


@pytest.mark.parametrize("op", ["compress", "decompress", "decompress_latent", "update",
                                "model_id"])
def test_a_model_on_the_meta_device_is_named(model, op):
    """A model built for shapes only (meta tensors) cannot code: one clear error (before:
    "Tensor.item() cannot be called on meta tensors" or "Cannot copy out of meta tensor")."""
    data = model.compress(torch.rand(1, 3, 32, 32), 8)
    m = Tiny().to("meta")
    calls = {"compress": lambda: m.compress(torch.rand(1, 3, 32, 32), 8),
             "decompress": lambda: m.decompress(data),
             "decompress_latent": lambda: m.decompress_latent(data),
             "update": lambda: m.update(), "model_id": lambda: m.model_id()}
    with pytest.raises(ValueError, match=f"{op} needs the model's weights, but they are on the "
                                         f"meta device"):
        calls[op]()


def test_a_meta_image_is_named(model):
    with pytest.raises(ValueError, match="the image is a meta tensor"):
        model.compress(torch.empty(1, 3, 32, 32, device="meta"), 8)


def test_a_scalar_state_tensor_is_fingerprinted(model):
    """A 0-dim float tensor in the state (e.g. a parametrization's learnable gain): the model id
    had raised "self.dim() cannot be 0 to view Float as Byte" in compress / decompress; now it
    is hashed like any tensor, and the ids of models without one are as before."""
    import torch.nn.utils.parametrize as P

    class Gain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g = torch.nn.Parameter(torch.tensor(1.5))

        def forward(self, w):
            return w * self.g

    m = Tiny().eval()
    m.load_state_dict(model.state_dict())
    assert m.model_id() == model.model_id()
    before = m.model_id()
    P.register_parametrization(m.g_a[2], "weight", Gain())
    x = torch.rand(1, 3, 32, 32)
    data = m.compress(x, 8, precision="fp32")
    assert m.model_id() != before and m.decompress(data).shape == x.shape
    with torch.no_grad():
        m.g_a[2].parametrizations.weight[0].g.fill_(2.0)
    assert m.model_id() != container.unpack(data).model_id    # (the gain is part of the id)


def _code_a_few_times(model, precisions=("fp32", "bf16"), widths=(48,), reps=3):
    """compress + decompress (the third use of a key replays a recording on AMX CPUs)."""
    x = torch.rand(1, 3, 64, 64)
    for p in precisions:
        for w in widths:
            for _ in range(reps):
                model.decompress(model.compress(x, w, precision=p), precision=p)


def test_a_deleted_model_is_freed_without_the_cyclic_collector():
    """A model that had coded sat in reference cycles through its own caches (the model id's
    module list held the model; a CPU replay held the model's __dict__, which held the replay):
    `del model` freed nothing until a full collection (up to 11 dead models, ~180 MB, alive at
    once in a load / code / delete loop)."""
    import gc
    import weakref

    from slimkernels.ops import clear_weight_caches
    from slimkernels.pretrained import load_model
    gc.collect()
    gc.disable()
    try:
        m = load_model()
        _code_a_few_times(m, precisions=("fp32", "bf16", "auto"), widths=(192, 48))
        refs = [weakref.ref(mm) for mm in m.modules()]
        del m
        clear_weight_caches()   # (the global weight caches' own holdings: the next test)
        alive = sum(r() is not None for r in refs)
    finally:
        gc.enable()
        gc.collect()
    assert alive == 0, f"{alive} of {len(refs)} modules of a deleted model wait for the collector"


def test_the_weight_caches_let_a_deleted_models_parameters_go():
    import gc
    import weakref

    from slimkernels.pretrained import load_model
    a = load_model()
    _code_a_few_times(a)
    refs = [weakref.ref(p) for p in a.parameters()]
    del a
    gc.collect()
    b = load_model()          # the next model (a reloaded checkpoint, the CLI's next call) ...
    _code_a_few_times(b, reps=1)   # ... codes an image
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} parameters of a deleted model are still alive (weight caches)"


def test_clear_caches_after_a_data_write_wins_over_a_model_id_built_before_it(monkeypatch):
    """The documented update through ``.data``: write, then ``model.clear_caches()``. A
    ``model_id`` being computed in another thread (compress's first step) from the values of
    before the write stores its result AFTER the clear, under the unchanged version key
    (_state.py:43-44): the model keeps naming the old weights in every file it writes from then
    on (real threads: e6_clear_race.py, stale id in 7/10 and 8/10 trials)."""
    import slimkernels.codec as codec
    from slimkernels.pretrained import load_model
    m = load_model()
    real = codec.model_fingerprint
    injected = []

    def fingerprint_then_writer_acts(model, config):
        fp = real(model, config)        # hashed the values of before the write
        if not injected:
            injected.append(1)          # meanwhile, the other thread writes and clears
            with torch.no_grad():
                model.g_a[0].weight.data.mul_(1.5)
            model.clear_caches()
        return fp
    monkeypatch.setattr(codec, "model_fingerprint", fingerprint_then_writer_acts)
    m.model_id()
    monkeypatch.setattr(codec, "model_fingerprint", real)
    assert injected
    assert m.model_id() == real(m, m.config()), \
        "model_id names the weights of before a .data write that clear_caches() followed"


def test_slim_sequential_refuses_a_start_or_stop_outside_its_layers():
    """(start=-1 began at the last layer, so a GDN ran on the image and then every layer did:
    a wrong output of the right shape; start past the end returned the input; 0.7 / '1' were
    truncated by int().)"""
    from slimkernels.codec import SlimSequential
    from slimkernels.nn import SlimConv2d, SlimGDN
    torch.manual_seed(0)
    s = SlimSequential(SlimConv2d(3, 8, 3, padding=1, widths=[4, 8]), SlimGDN(8))
    x = torch.rand(1, 3, 8, 8)
    for kw in ({"start": -1}, {"start": 3}, {"start": 0.7}, {"stop": "1"}, {"stop": -1},
               {"stop": 3}, {"start": 2, "stop": 1}):
        with pytest.raises(ValueError, match="(start|stop) must be an int in 0..[12]"):
            s(x, 4, **kw)
    h = s[0](x, 4)
    assert torch.equal(s(x, 4, stop=1), h)
    assert torch.equal(s(h, 4, start=1), s[1](h))
    assert torch.equal(s(x, 4, start=2), x)       # (no layer left: the input, as a slice would)


def test_numpy_inputs_are_refused_as_not_tensors(model):
    """(a numpy array reached x.dim() / x.is_cuda inside the layers, SlimSequential and
    forward_widths: AttributeError; SlimCAE.forward and the entropy models said "expects
    [N, 3, H, W], got (1, 3, 32, 32)", the very shape they asked for.)"""
    from slimkernels.codec import SlimSequential
    from slimkernels.nn import (EntropyBottleneck, SlimConv2d, SlimConvTranspose2d, SlimGDN,
                                SlimGDNPlus, SwitchGDN)
    a = np.random.rand(1, 3, 32, 32).astype(np.float32)
    a8 = np.random.rand(1, 8, 4, 4).astype(np.float32)
    calls = [(lambda: SlimConv2d(3, 8, 3)(a), "SlimConv2d"),
             (lambda: SlimConvTranspose2d(8, 3, 3)(a8), "SlimConvTranspose2d"),
             (lambda: SlimGDN(8)(a8), "SlimGDN"), (lambda: SwitchGDN([8, 4])(a8), "SwitchGDN"),
             (lambda: SlimGDNPlus([8, 4])(a8), "SlimGDNPlus"),
             (lambda: SlimSequential(SlimConv2d(3, 8, 3, widths=[4, 8]))(a, 4), "SlimSequential"),
             (lambda: EntropyBottleneck(8)(a8), r"EntropyBottleneck\(8\).forward"),
             (lambda: model.entropy_bottleneck(a8), "SlimEntropyBottleneck"),
             (lambda: model(a, model.widths[-1]), type(model).__name__),
             (lambda: model.forward_widths(a, model.widths), type(model).__name__),
             (lambda: model.decode(a8), f"{type(model).__name__}.decode")]
    for call, where in calls:
        with pytest.raises(TypeError, match=f"{where} takes a torch.Tensor .*, got numpy.ndarray: "
                                            r"convert it with torch.from_numpy\(x\)"):
            call()
    with pytest.raises(TypeError, match="forward_widths takes a list of widths, got 8: for one "
                                        r"width call forward\(x, width\)"):
        model.forward_widths(torch.rand(1, 3, 32, 32), 8)


def test_slim_sequential_start_takes_what_operator_index_takes():
    """(the start / stop check took Python and numpy ints only: a 0-dim integer tensor, which
    int() and the widths' check take, was refused.)"""
    from slimkernels.codec import SlimSequential
    from slimkernels.nn import SlimConv2d, SlimGDN
    s = SlimSequential(SlimConv2d(3, 8, 3, padding=1, widths=[4, 8]), SlimGDN(8))
    h = torch.rand(1, 4, 8, 8)
    ref = s(h, 4, start=1)
    for start in (torch.tensor(1), np.int64(1)):
        assert torch.equal(s(h, 4, start=start), ref)
    for bad in (torch.tensor(1.0), True):
        with pytest.raises(ValueError, match="start must be an int in 0..2"):
            s(h, 4, start=bad)


def test_torch_export_leaves_later_calls_working():
    """(torch.export of a SlimCAE ran the sub-pixel plan under its FakeTensorMode: the process-wide
    lru_cache kept a FakeTensor, and every later CPU decompress of any model in the process failed,
    "Cannot access data pointer of Tensor". The compiled kernels are also skipped under a torch
    dispatch mode: they take data pointers.) In a child process: the cache is process-wide."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import warnings; warnings.filterwarnings("ignore")
        import torch
        from slimkernels.models import SlimCAE
        torch.manual_seed(0)
        m = SlimCAE((32, 16)).eval(); m.update()
        x = torch.rand(1, 3, 48, 64)
        ep = torch.export.export(m, (x, 16))
        fresh = SlimCAE((32, 16)).eval(); fresh.load_state_dict(m.state_dict())
        for model in (fresh, m):
            y = model.decompress(model.compress(x, 16))
            assert y.shape == x.shape and bool(torch.isfinite(y).all())
        print("OK")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_torch_jit_trace_is_refused_by_name(model):
    """(a trace under no_grad returned uninitialised memory from the compiled kernels without a
    word; with gradients on it failed with C++'s "unordered_map::at".)"""
    import warnings

    class Enc(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.encode(x, 8)
    x = torch.rand(1, 3, 32, 32)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(RuntimeError, match="torch.jit.trace cannot record slimkernels' ops"):
                torch.jit.trace(Enc(model), (x,), check_trace=False)
    assert model.encode(x, 8).shape[1] == 8   # (eager calls are unaffected afterwards)


def test_torch_jit_script_is_refused_by_name(model):
    """(torch.jit.script of a layer or a model failed inside TorchScript's type resolution:
    "AssertionError: Unsupported annotation typing.Optional[dict] could not be resolved".)"""
    from slimkernels.nn import SlimConv2d, SlimConvTranspose2d, SlimGDN, SwitchGDN
    for m in (SlimConv2d(4, 8, 3, widths=[8, 4]), SlimConvTranspose2d(8, 4, 3, widths=[4, 2]),
              SlimGDN(8), SwitchGDN([8, 4]), model):
        name = "SlimConv2d" if m is model else type(m).__name__   # (a model: its first layer)
        with pytest.raises(RuntimeError, match=f"torch.jit.script cannot compile {name}"):
            torch.jit.script(m)
    assert model.encode(torch.rand(1, 3, 32, 32), 8).shape[1] == 8


def test_a_compiled_submodule_keeps_the_model_id(model):
    """(model.g_a = torch.compile(model.g_a) put "_orig_mod." into the state_dict names: the same
    weights had another model id, and files were refused both ways.)"""
    import copy
    c = copy.deepcopy(model)
    c.g_a = torch.compile(c.g_a)
    assert c.model_id() == model.model_id()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compress_with_an_encoder_compiled_whole_checks_the_image_and_decodes(model, precision):
    """An analysis transform compiled whole (``fullgraph=True``): its first conv, inside the
    compiled graph, leaves compress's image range check to compress (which still refuses a value
    past the pixel range), and the stream decodes as the eager model's does."""
    import copy
    torch.manual_seed(3)
    c = copy.deepcopy(model)
    c.g_a = torch.compile(c.g_a, fullgraph=True, backend="eager")
    x = torch.rand(1, 3, 40, 56)
    data = c.compress(x, 12, precision=precision)
    want = model.decompress(model.compress(x, 12, precision=precision), precision=precision)
    got = model.decompress(data, precision=precision)
    assert got.shape == want.shape == x.shape
    # (the compiled graph's PyTorch convs round apart from the eager kernels: the same symbols
    # but where a latent sits at a rounding boundary)
    assert (got - want).abs().mean() < 1e-3, (got - want).abs().mean()
    bad = x.clone()
    bad[0, 1, 17, 33] = 2.0   # (past PIXEL_RANGE)
    with pytest.raises(ValueError, match="values reach"):
        c.compress(bad, 12, precision=precision)
    bad[0, 1, 17, 33] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        c.compress(bad, 12, precision=precision)


def test_compiled_transforms_keep_working_across_many_keys(model):
    """A compiled g_a / g_s is not recorded for a CPU replay (an instance-level forward, as
    hooks are not): each recording ran it under a new torch-function mode, which dynamo compiled
    it again for, at every new image size, until its recompile limit failed compress
    (FailOnRecompileLimitHit, fullgraph=True) or left the module uncompiled."""
    import copy
    c = copy.deepcopy(model)
    c.g_a = torch.compile(c.g_a, fullgraph=True, backend="eager")
    c.g_s = torch.compile(c.g_s, fullgraph=True, backend="eager")
    for i in range(10):   # (dynamo's recompile limit: 8)
        x = torch.rand(1, 3, 32 + 4 * i, 48)
        for _ in range(3):   # (a key records at its second use, verifies at its third)
            data = c.compress(x, 12, precision="fp32")
            assert c.decompress(data, precision="fp32").shape == x.shape
    assert data == model.compress(x, 12, precision="fp32")


@pytest.mark.skipif(tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 13),
                    reason="torch 2.11's dynamo guards on the recording mode's instance: the "
                           "function is compiled again per recording there (still the right "
                           "bytes, until its recompile limit)")
def test_a_compiled_function_inside_a_layer_keeps_working_across_many_keys(model):
    """A torch.compile'd plain function called in a layer's forward (no compiled module, no
    hook: the key is recorded, and its recording fails): each recording ran it under a new
    torch-function mode class, which dynamo compiled it again for, until its recompile limit
    failed compress at the 7th image size (fullgraph=True)."""
    import copy
    c = copy.deepcopy(model)
    f = torch.compile(lambda t: t * 1.5, fullgraph=True, backend="eager")

    class Wrap(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, w):
            return f(self.inner(x, w))

    c.g_a[0] = Wrap(c.g_a[0])
    e = copy.deepcopy(c)
    e.cpu_replay = False   # (no recording at all: the bytes each call must give)
    for i in range(10):   # (dynamo's recompile limit: 8)
        x = torch.rand(1, 3, 32 + 4 * i, 48)
        want = e.compress(x, 12, precision="fp32")
        for _ in range(4):   # (a key records at its second use, replays from its third)
            assert c.compress(x, 12, precision="fp32") == want, i


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_decompress_with_a_synthesis_compiled_whole_gives_the_eager_image(precision):
    """A synthesis transform compiled whole (``fullgraph=True``) decodes the eager model's stream
    to its image (bf16: the IGDN of an fp32 latent under autocast, whose x^2 the compiled graph
    had left in fp32 against a bf16 gamma, "Input type (torch.float32) and weight type
    (torch.bfloat16) should be the same"), twice in a row."""
    import copy
    from slimkernels.models import SlimCAE
    torch.manual_seed(4)
    model = SlimCAE((16, 12)).eval()   # (the GDN family in the synthesis, as SlimCAE has it)
    model.update()
    c = copy.deepcopy(model)
    c.g_s = torch.compile(c.g_s, fullgraph=True, backend="eager")
    data = model.compress(torch.rand(1, 3, 40, 56), 12, precision=precision)
    want = model.decompress(data, precision=precision)
    for _ in range(2):
        got = c.decompress(data, precision=precision)
        assert got.shape == want.shape and bool(torch.isfinite(got).all())
        tol = 1e-5 if precision == "fp32" else 1e-2
        torch.testing.assert_close(got, want, rtol=0, atol=tol)


def test_a_forward_under_fake_tensors_gives_shapes_and_leaves_real_calls_alone():
    """(under torch's FakeTensorMode, for shape / memory estimation, the forward reached a
    compiled kernel with fake tensors' null pointers, or oneDNN's prepacking without a fake
    rule; and a weight cache built there would have served fake tensors to later real calls.)"""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from slimkernels.models import SlimCAE
    torch.manual_seed(0)
    m = SlimCAE((32, 16)).eval()
    m.update()
    x = torch.rand(1, 3, 64, 48)
    before = m.compress(x, 16)
    m.clear_caches()
    with FakeTensorMode(allow_non_fake_inputs=True) as fm, torch.no_grad():
        out = m(fm.from_tensor(x), 16)
    assert tuple(out["x_hat"].shape) == (1, 3, 64, 48)
    assert m.compress(x, 16) == before
    assert m.decompress(before).shape == x.shape


def test_first_parameter_is_the_first_of_parameters():
    """codec._first_parameter_of (what compress and decompress ask for the device and dtype) is
    ``next(parameters())`` on every tree: nested, a module shared twice, None parameters,
    modules without any, a cycle (each module once, as torch's walk), none at all."""
    import torch.nn as nn
    from slimkernels.codec import _first_parameter_of
    shared = nn.Linear(2, 2)
    a = nn.Sequential(nn.ReLU(), nn.Sequential(nn.Identity(), shared), shared, nn.Linear(3, 3))
    b = nn.Module()
    b.register_parameter("none", None)
    b.inner = nn.Sequential(nn.ReLU(), nn.Sequential(nn.Sequential(nn.Linear(1, 4))))
    b.late = nn.Linear(5, 5)
    c = nn.Sequential(nn.ReLU())
    c[0].up = c                                   # a cycle without parameters
    d = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 1, 1))
    d[0].up = d                                   # a cycle before the first one
    for m in (a, b, c, d, nn.ReLU(), Tiny()):
        want = next(m.parameters(), None)
        got = _first_parameter_of(m)
        assert got is want, type(m).__name__


@pytest.mark.parametrize("bad", [0, -4, None, 4.5, "4", True])
def test_a_bad_downsampling_is_named(model, bad):
    """(0 was a ZeroDivisionError inside compress, None a TypeError from int(), 4.5 ran as 4.)"""
    import copy
    m = copy.deepcopy(model)
    m.downsampling = bad
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"Tiny\.downsampling must be an int >= 1 \(g_a's total "
                                         r"stride\), got "):
        m.compress(x, 12)
    with pytest.raises(ValueError, match=r"Tiny\.downsampling must be an int >= 1"):
        m.decompress(model.compress(x, 12))


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr"])
def test_a_sparse_image_is_named(model, layout):
    """A sparse image tensor reached the range check's kernel: torch's raw NotImplementedError
    ("Could not run 'aten::aminmax' ... 'SparseCPU'")."""
    x = torch.rand(1, 3, 16, 16)
    xs = x.to_sparse() if layout == "sparse_coo" else x[0, 0].to_sparse_csr()
    with pytest.raises(ValueError, match=f"the image is a {layout} tensor: pass a dense one"):
        model.compress(xs, 12)
