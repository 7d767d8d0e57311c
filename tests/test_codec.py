"""slimkernels.codec: the SlimCodec base class gives any slimmable autoencoder coding."""
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
    """decompress(compress(x)) is the eval-mode forward pass (median rounding), cropped."""
    H, W = size
    x = torch.rand(1, 3, H, W)
    data = model.compress(x, width)
    x_hat = model.decompress(data)
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
    with pytest.raises(ValueError, match="positive"):
        Tiny(widths=())

    class NoConfig(Tiny):
        config = SlimCodec.config
    with pytest.raises(NotImplementedError, match="config"):
        NoConfig().model_id()


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
    data = m.compress(x, 8)
    x_hat = m.decompress(data)
    torch.testing.assert_close(x_hat, model.decompress(data), rtol=1e-5, atol=1e-6)


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
    data = m.compress(x, 12)
    hook.remove()
    assert seen == [layout]
    torch.testing.assert_close(m.decompress(data), model.decompress(data), rtol=1e-5, atol=1e-6)
