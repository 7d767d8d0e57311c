"""SlimCodec subclasses other than the bundled SlimCAE (found by an audit of the custom-codec API):
the fused and layer-by-layer paths (SlimSequential's conv + GDN fusion, decompress's image from the
last layer, forward_widths' shared first layer) must not skip a forward, decode, encode or hook of
the user's, and compress / decompress check what the transforms return."""
import pytest
import torch
import torch.nn as nn

from slimkernels.codec import SlimCodec, SlimSequential
from slimkernels.nn import (SlimConv2d, SlimConvTranspose2d, SlimEntropyBottleneck, SlimGDN)
from slimkernels.ops import conv as conv_ops

@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)   # (before each test builds its codec: a failure reproduces)


amx = pytest.mark.skipif(not conv_ops.amx_conv_available(),
                         reason="the fused CPU paths run on AMX CPUs only")


class Codec(SlimCodec):
    """Two stride-2 5x5 layers per transform, SlimGDN between (downsampling 4)."""
    downsampling = 4

    def __init__(self, widths=(16, 8), tag="audit"):
        super().__init__(widths)
        ws, N = self.widths, self.widths[0]
        self.tag = tag
        self.g_a = SlimSequential(SlimConv2d(3, N, 5, 2, 2, widths=ws), SlimGDN(N),
                                  SlimConv2d(N, N, 5, 2, 2, widths=ws))
        self.g_s = SlimSequential(SlimConvTranspose2d(N, N, 5, 2, 2, 1, widths=ws),
                                  SlimGDN(N, inverse=True), SlimConvTranspose2d(N, 3, 5, 2, 2, 1))
        self.entropy_bottleneck = SlimEntropyBottleneck(ws)

    def config(self):
        return {"arch": self.tag, "widths": self.widths}


def _ready(model):
    """eval, weights scaled so that the latents are not all zero, CDF tables built."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.g_a.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(2.0)
        y = model.encode(torch.rand(1, 3, 64, 64), model.widths[0])
        last = [m for m in model.g_a.modules() if isinstance(m, nn.Conv2d)][-1]
        last.weight.mul_(3.0 / y.std().item())
    model.eval().update()
    return model


def _autocast_decode(model, data):
    """What decompress(data, precision="bf16") should give: decode of the file's latents under
    bf16 autocast, clamped and cropped (tests/test_codec.py's reference)."""
    f, sym = model.decompress_latent(data)
    eb = model.entropy_bottleneck.for_width(f.width)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        x_hat = model.decode(eb.dequantize_symbols(sym)).float().clamp(0, 1)
    return x_hat[..., :f.height, :f.img_width]


# -- SlimSequential fuses a conv subclass's output with the next GDN, skipping its forward --------
class _ScaledConv(SlimConv2d):
    def forward(self, x, width=None):
        return super().forward(x, width) * 0.5


@amx
def test_conv_subclass_with_own_forward_runs_it_before_the_gdn():
    torch.manual_seed(0)
    conv = _ScaledConv(3, 8, 5, 2, 2, widths=[8, 4])
    seq = SlimSequential(conv, SlimGDN(8)).eval()
    x = torch.rand(1, 3, 16, 16)
    ref = seq[1](seq[0](x, 4))                  # with gradient: layer by layer
    with torch.no_grad():                       # no gradient: fused (TypeError: 'gdn')
        out = seq(x, 4)
    torch.testing.assert_close(out, ref.detach())


# -- decompress's last-layer image path (_decodes_image) ignores overrides -------------------------
class _ScaledTConv(SlimConvTranspose2d):
    def forward(self, x, width=None):
        return super().forward(x, width) * 0.5 + 0.25


@amx
def test_last_tconv_subclass_with_own_forward_decompresses():
    m = Codec(tag="tconv-subclass")
    last = _ScaledTConv(16, 3, 5, 2, 2, 1)
    last.load_state_dict(m.g_s[-1].state_dict())
    m.g_s[-1] = last
    _ready(m)
    data = m.compress(torch.rand(1, 3, 32, 48), 8, precision="bf16")
    out = m.decompress(data, precision="bf16")     # TypeError: unexpected 'out_clamp'
    torch.testing.assert_close(out, _autocast_decode(m, data), rtol=0, atol=0)


class _SigmoidSequential(SlimSequential):
    def forward(self, x, width=None, start=0, stop=None):
        return torch.sigmoid(super().forward(x, width, start, stop))


@amx
def test_g_s_slimsequential_subclass_decompresses_like_decode():
    m = Codec(tag="seq-subclass")
    m.g_s = _SigmoidSequential(*m.g_s)
    _ready(m)
    data = m.compress(torch.rand(1, 3, 32, 48), 8, precision="bf16")
    out = m.decompress(data, precision="bf16")     # sigmoid applied before the last layer
    torch.testing.assert_close(out, _autocast_decode(m, data), rtol=0, atol=0)


@amx
def test_forward_hook_on_g_s_applies_to_decompress_at_every_width():
    m = _ready(Codec(tag="g_s-hook"))
    m.g_s.register_forward_hook(lambda mod, inp, out: out * 0.5 + 0.25)
    data = m.compress(torch.rand(1, 3, 32, 48), 8, precision="bf16")
    out = m.decompress(data, precision="bf16")     # the hook sees g_s's second-last output
    torch.testing.assert_close(out, _autocast_decode(m, data), rtol=0, atol=0)


@amx
def test_instance_level_decode_is_used_by_decompress_at_every_width():
    m = _ready(Codec(tag="instance-decode"))
    base = m.decode
    m.decode = lambda y: base(y) * 0.5 + 0.25
    data = m.compress(torch.rand(1, 3, 32, 48), 8, precision="bf16")
    out = m.decompress(data, precision="bf16")     # w=8: SlimCodec.decode's path instead
    torch.testing.assert_close(out, _autocast_decode(m, data), rtol=0, atol=0)


# -- forward_widths bypasses an overridden encode ------------------------------------------------
class _ShiftedEncode(Codec):
    def encode(self, x, width=None):
        return super().encode(x - 0.5, width)


def test_forward_widths_uses_an_overridden_encode():
    m = _ready(_ShiftedEncode(tag="shifted-encode"))
    x = torch.rand(2, 3, 16, 16)
    joint = m.forward_widths(x, m.widths)        # eval, with gradient: the shared first layer
    for w, out in zip(m.widths, joint):
        torch.testing.assert_close(out["x_hat"], m(x, w)["x_hat"])


# -- compress does not check the latent g_a returns ------------------------------------------------
def test_compress_refuses_a_latent_with_more_channels_than_the_width():
    m = Codec(tag="fixed-latent")
    fixed = SlimConv2d(16, 16, 5, 2, 2)          # built without widths: always 16 channels
    fixed.load_state_dict(m.g_a[-1].state_dict())
    m.g_a[-1] = fixed
    _ready(m)
    # was: "the latent has NaN, inf ... the image is not finite" (the quantizer read 16 medians
    # of the 8-channel entropy model)
    with pytest.raises(ValueError, match=r"returned a latent of shape \(1, 16, 8, 12\), expected "
                                         r"\[1, 8, 8, 12\]"):
        m.compress(torch.rand(1, 3, 32, 48), 8, precision="fp32")


def test_compress_refuses_a_latent_that_does_not_match_downsampling():
    m = _ready(Codec(tag="wrong-downsampling"))
    m.downsampling = 8                           # g_a's stride is 4
    x = torch.rand(1, 3, 32, 48)
    # was: compress wrote the file, decompress called it a "corrupt .slim payload"
    with pytest.raises(ValueError, match=r"shape \(1, 16, 8, 12\), expected \[1, 16, 4, 6\] .*"
                                         r"downsampling = 8"):
        m.compress(x, 16, precision="fp32")


# -- decompress returns whatever g_s outputs ---------------------------------------------------------
@pytest.mark.parametrize("out_channels", [1, 4])
def test_decompress_gives_rgb_or_refuses_another_channel_count(out_channels):
    m = Codec(tag=f"out{out_channels}")
    m.g_s[-1] = SlimConvTranspose2d(16, out_channels, 5, 2, 2, 1)
    _ready(m)
    x = torch.rand(1, 3, 32, 48)
    data = m.compress(x, 16, precision="fp32")   # (was: a [1, 1 or 4, 32, 48] image, silently)
    with pytest.raises(ValueError, match=r"expected \[1, 3, 32, 48\].*ends in 3 channels"):
        m.decompress(data, precision="fp32")


def test_decompress_gives_the_original_size_or_refuses():
    m = Codec(tag="short-g_s")
    m.g_s[-1].output_padding = 0                 # g_s now gives 4h - 1 rows / columns
    _ready(m)
    x = torch.rand(1, 3, 32, 48)
    data = m.compress(x, 16, precision="fp32")   # (was: a 31x47 image, silently)
    with pytest.raises(ValueError, match=r"returned \(1, 3, 31, 47\), expected \[1, 3, 32, "
                                         r"48\].*output_padding"):
        m.decompress(data, precision="fp32")


# -- compress pre-casts the image to bf16 ahead of an overridden encode ---------------------------
class _AffineEncode(Codec):
    def encode(self, x, width=None):
        return super().encode(x * 2 - 1 + 1e-3, width)


def test_bf16_compress_with_overridden_encode_codes_its_autocast_latents():
    m = _ready(_AffineEncode(tag="affine-encode"))
    torch.manual_seed(3)
    x = torch.rand(1, 3, 32, 48)
    data = m.compress(x, 16, precision="bf16")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m.encode(x, 16)
    eb = m.entropy_bottleneck.for_width(16)
    # (tests/test_codec.py asserts this for SlimCodec.encode; the override gets a bf16 image)
    assert torch.equal(m.decompress_latent(data)[1], eb.quantize_symbols(y))


def test_decompress_refuses_an_output_larger_than_the_latent_times_downsampling():
    """A g_s that upsamples too far had its output cropped to a corner, silently."""
    m = Codec(tag="long-g_s")
    m.g_s.append(SlimConvTranspose2d(3, 3, 4, 2, 1))   # one more 2x upsampling
    _ready(m)
    data = m.compress(torch.rand(1, 3, 32, 48), 16, precision="fp32")
    with pytest.raises(ValueError, match=r"returned \(1, 3, 64, 96\), expected \[1, 3, 32, 48\]"):
        m.decompress(data, precision="fp32")


class _WidthScaledFirst(SlimConv2d):
    def forward(self, x, width=None):
        return super().forward(x, width) * (1.0 + (width or self.width) / 100)


def test_forward_widths_runs_a_first_layer_of_its_own_per_width():
    """forward_widths' shared first layer skipped a first layer's own forward (and its hooks)."""
    m = Codec(tag="first-of-its-own")
    first = _WidthScaledFirst(3, 16, 5, 2, 2, widths=m.widths)
    first.load_state_dict(m.g_a[0].state_dict())
    m.g_a[0] = first
    _ready(m)
    x = torch.rand(2, 3, 16, 16)
    for w, out in zip(m.widths, m.forward_widths(x, m.widths)):
        torch.testing.assert_close(out["x_hat"], m(x, w)["x_hat"])


class _PlainSequentialCodec(Codec):
    def __init__(self, which):
        super().__init__()
        g = getattr(self, which)
        setattr(self, which, nn.Sequential(*g))   # forward(x): no width


@pytest.mark.parametrize("which", ["g_a", "g_s"])
def test_a_plain_sequential_transform_is_refused_by_name(which):
    model = _PlainSequentialCodec(which).eval()
    with pytest.raises(TypeError, match=f"{which} is a Sequential .*SlimSequential"):
        model(torch.rand(1, 3, 16, 16), 8)


class _SetConfigCodec(Codec):
    def config(self):
        return {"arch": "audit", "widths": set(self.widths)}


def test_a_config_json_cannot_hold_is_refused_naming_config():
    model = _ready(_SetConfigCodec())
    with pytest.raises(ValueError, match=r"config\(\) must return JSON values.*set"):
        model.model_id()
    with pytest.raises(ValueError, match=r"config\(\) must return JSON values"):
        model.compress(torch.rand(1, 3, 16, 16), 8)
