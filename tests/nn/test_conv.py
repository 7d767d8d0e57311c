import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkernels.nn import SlimConv2d, SlimConvTranspose2d


def test_conv_full_width_matches_torch_and_loads_plain_checkpoint():
    torch.manual_seed(0)
    ref = nn.Conv2d(8, 12, 5, stride=2, padding=2)
    slim = SlimConv2d(8, 12, 5, stride=2, padding=2, widths=[12, 6, 3])
    slim.load_state_dict(ref.state_dict())          # same keys
    assert set(slim.state_dict()) == set(ref.state_dict())
    x = torch.randn(2, 8, 13, 11)
    # fp32 tolerance, not bit equality: the CPU path runs oneDNN in channels_last, whose
    # accumulation order differs from the NCHW kernel on some CPUs (AVX2 EPYC: 3e-5 relative at
    # a near-zero output); the float64 test below checks the slicing exactly
    torch.testing.assert_close(slim(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("win,wout", [(8, 12), (5, 6), (3, 3), (1, 12)])
def test_conv_slice_equals_sliced_weights_float64(win, wout):
    torch.manual_seed(1)
    slim = SlimConv2d(8, 12, 5, stride=2, padding=2, widths=[12, 6, 3]).double()
    x = torch.randn(2, win, 9, 7, dtype=torch.float64)
    y = slim(x, wout)
    ref = F.conv2d(x, slim.weight[:wout, :win], slim.bias[:wout], stride=2, padding=2)
    assert y.shape == (2, wout, 5, 4)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_conv_width_outside_slice_has_no_effect():
    torch.manual_seed(2)
    slim = SlimConv2d(8, 12, 3, padding=1, widths=[12, 6])
    x = torch.randn(1, 4, 6, 6)
    y0 = slim(x, 6)
    with torch.no_grad():
        slim.weight[6:] += 100
        slim.weight[:, 4:] += 100
        slim.bias[6:] += 100
    torch.testing.assert_close(slim(x, 6), y0, rtol=0, atol=0)


def test_set_width_and_errors():
    slim = SlimConv2d(8, 12, 3, padding=1, widths=[12, 6])
    slim.set_width(6)
    assert slim(torch.randn(1, 8, 4, 4)).shape[1] == 6
    with pytest.raises(ValueError, match="width 5 is not one of"):
        slim(torch.randn(1, 8, 4, 4), 5)
    with pytest.raises(ValueError, match="9 channels"):
        slim(torch.randn(1, 9, 4, 4))
    with pytest.raises(ValueError, match="outside"):
        SlimConv2d(8, 12, 3, widths=[13])
    with pytest.raises(ValueError, match="groups"):
        SlimConv2d(8, 12, 3, groups=2)


def test_conv_transpose_full_width_and_slice(monkeypatch):
    import slimkernels.ops.conv as C
    torch.manual_seed(3)
    ref = nn.ConvTranspose2d(10, 6, 5, stride=2, padding=2, output_padding=1)
    slim = SlimConvTranspose2d(10, 6, 5, stride=2, padding=2, output_padding=1, widths=[6, 4])
    slim.load_state_dict(ref.state_dict())
    x = torch.randn(2, 10, 5, 7)
    # few output channels take the sub-pixel CPU path: the same function, other fp32 rounding
    torch.testing.assert_close(slim(x), ref(x), rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(C, "SUBPIXEL_MAX_PHASE_CHANNELS", 0)      # the direct path: bit-exact
    torch.testing.assert_close(slim(x), ref(x), rtol=0, atol=0)
    s64 = slim.double()
    x = torch.randn(2, 7, 5, 7, dtype=torch.float64)
    y = s64(x, 4)
    r = F.conv_transpose2d(x, s64.weight[:7, :4], s64.bias[:4], stride=2, padding=2,
                           output_padding=1)
    assert y.shape == (2, 4, 10, 14)
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)


def test_fixed_output_layer_takes_no_width():
    last = SlimConvTranspose2d(8, 3, 9, stride=4, padding=4, output_padding=3)
    assert last.slim_output is False and last.widths == [3]
    assert last(torch.randn(1, 5, 2, 3)).shape == (1, 3, 8, 12)


def test_string_paddings_as_nn_conv2d_and_clear_refusals():
    import torch.nn.functional as F

    from slimkernels.nn.conv import SlimConv2d
    x = torch.randn(1, 4, 5, 7)
    for pad, want in (("same", 1), ("valid", 0)):
        m = SlimConv2d(4, 6, 3, padding=pad)
        assert m.padding == (want, want)
        ref = torch.nn.Conv2d(4, 6, 3, padding=pad)
        ref.load_state_dict(m.state_dict())
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, padding=want),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="even kernel_size 4 needs uneven padding"):
        SlimConv2d(4, 6, 4, padding="same")
    with pytest.raises(ValueError, match="padding='same' needs stride=1"):
        SlimConv2d(4, 6, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding='full': use an int, 'valid' or 'same'"):
        SlimConv2d(4, 6, 3, padding="full")
    with pytest.raises(ValueError, match="stride must be an int or a pair of equal ints, got 1.5"):
        SlimConv2d(4, 6, 3, stride=1.5)


def test_geometry_set_after_construction_reaches_the_op():
    """layer.padding / stride / output_padding set after __init__ (as on an nn.Conv2d) were
    ignored: the forward read the ints kept at construction."""
    import torch.nn.functional as F

    from slimkernels.nn.conv import SlimConv2d, SlimConvTranspose2d
    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 9)
    m = SlimConv2d(4, 6, 3, padding=1)
    m.padding, m.stride = 0, (2, 2)
    assert (m.padding, m.stride) == ((0, 0), (2, 2))
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, stride=2), rtol=1e-5, atol=1e-6)
    m.stride, m.padding = 1, "same"
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, m.bias, padding=1), rtol=1e-5, atol=1e-6)
    t = SlimConvTranspose2d(4, 6, 3, stride=2, padding=1)
    t.output_padding = 1
    r = F.conv_transpose2d(x, t.weight, t.bias, stride=2, padding=1, output_padding=1)
    torch.testing.assert_close(t(x), r, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="square padding only"):
        m.padding = (1, 2)
    assert m.padding == (1, 1)       # unchanged by the refused value


@pytest.mark.parametrize("pad", ["same", "valid"])
def test_a_string_padding_of_a_transposed_layer_is_named(pad):
    """nn.ConvTranspose2d has no string paddings: at construction or set later, one message
    (it read "square padding only, got ('s', 'a', 'm', 'e')") that gives the int padding."""
    with pytest.raises(ValueError, match=f"padding='{pad}': a transposed convolution takes an "
                                         f"int padding"):
        SlimConvTranspose2d(8, 8, 5, 2, padding=pad)
    m = SlimConvTranspose2d(8, 8, 5, 2, 2, 1)
    with pytest.raises(ValueError, match="takes an int padding"):
        m.padding = pad
    assert m.padding == (2, 2)   # (the refused value left the layer as it was)
    # the hint's geometry: an output of stride x the input's size
    k, s = 5, 2
    m = SlimConvTranspose2d(8, 8, k, s, padding=(k - 1) // 2, output_padding=s - 1)
    assert m(torch.randn(1, 8, 6, 7)).shape == (1, 8, 12, 14)


@pytest.mark.parametrize("cls", [SlimConv2d, SlimConvTranspose2d])
def test_unsupported_attributes_set_after_construction_are_refused(cls):
    """groups / dilation / padding_mode, refused by the constructor, had been ignored silently
    when set afterwards (nn.Conv2d honours them: another output)."""
    c = cls(8, 8, 3, padding=1)
    x = torch.rand(1, 8, 7, 7)
    want = c(x).shape
    for name, bad in (("dilation", (2, 2)), ("dilation", 2), ("groups", 2),
                      ("padding_mode", "reflect")):
        with pytest.raises(ValueError, match=rf"{cls.__name__} supports {name}=.* only, got"):
            setattr(c, name, bad)
    for name, ok in (("dilation", (1, 1)), ("groups", 1), ("padding_mode", "zeros")):
        setattr(c, name, ok)
    assert c.dilation == (1, 1) and c.groups == 1 and c(x).shape == want


@pytest.mark.parametrize("cls", [SlimConv2d, SlimConvTranspose2d])
def test_bad_channels_and_geometry_are_refused_at_construction(cls):
    """Channel counts that are not ints >= 1 and a stride < 1 or a negative padding /
    output_padding are refused by the constructor and when set afterwards: stride 0 and padding
    -1 built and failed only at forward, 16.0 channels was torch's raw "empty(): argument
    'size'" TypeError, 0 channels a layer without weights and a warning."""
    name = cls.__name__
    for ci, co, what in ((0, 8, "in_channels"), (16.0, 8, "in_channels"),
                         (8, True, "out_channels"), (8, -2, "out_channels")):
        with pytest.raises(ValueError, match=rf"{name}: {what} must be an int >= 1, got"):
            cls(ci, co, 3)
    geometry = [("stride", 0, ">= 1"), ("padding", -1, ">= 0")]
    if cls is SlimConvTranspose2d:
        geometry.append(("output_padding", -1, ">= 0"))
    for attr, bad, rule in geometry:
        with pytest.raises(ValueError, match=rf"{name}: {attr} must be {rule}, got {bad}"):
            cls(8, 8, 3, **{attr: bad})
        c = cls(8, 8, 3)
        with pytest.raises(ValueError, match=rf"{name}: {attr} must be {rule}, got {bad}"):
            setattr(c, attr, bad)
        assert getattr(c, attr) == ((1, 1) if attr == "stride" else (0, 0))   # (unchanged)
    assert cls(8, 8, 3, stride=2, padding=1).stride == (2, 2)
    for k in (0, -1, (0, 0)):   # (0 had built a layer without weights, with torch's warning)
        with pytest.raises(ValueError, match=rf"{name}: kernel_size must be >= 1, got"):
            cls(8, 8, k)
    assert cls(8, 8, 1).weight.shape[-2:] == (1, 1)


@pytest.mark.parametrize("cls", [SlimConv2d, SlimConvTranspose2d])
def test_width_assigned_directly_is_checked_as_set_width_does(cls):
    """``layer.width = 5`` on a layer of widths [16, 8] had bypassed set_width's check and run a
    5-channel output."""
    c = cls(8, 16, 3, widths=[16, 8])
    x = torch.randn(1, 8, 6, 6)
    for bad, msg in ((5, "width 5 is not one of \\[16, 8\\]"), (17, "width 17 is not one of"),
                     (None, "width must be an int, got None"), ("8", "width must be an int"),
                     (8.0, "width must be an int")):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: {msg}"):
            c.width = bad
        assert c.width == 16 and c(x).shape[1] == 16   # (unchanged)
    c.width = np.int64(8)
    assert type(c.width) is int and c(x).shape[1] == 8


def test_a_positional_dilation_or_groups_is_not_taken_as_bias():
    """(SlimConv2d(4, 4, 3, 1, 1, 2), nn.Conv2d's dilation=2, made a layer with a bias and
    dilation 1 silently: bias is the 6th positional argument here.)"""
    with pytest.raises(ValueError, match=r"SlimConv2d: bias \(the 6th positional argument; "
                                         r"dilation is not taken\) must be True or False, got 2"):
        SlimConv2d(4, 4, 3, 1, 1, 2)
    with pytest.raises(ValueError, match=r"SlimConvTranspose2d: bias \(the 7th positional"):
        SlimConvTranspose2d(4, 4, 3, 1, 1, 0, 2)
    assert SlimConv2d(4, 4, 3, 1, 1, False).bias is None
    assert SlimConvTranspose2d(4, 4, 3, bias=1).bias is not None
