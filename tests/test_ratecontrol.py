"""slimkernels.ratecontrol: the width for a target rate or quality."""
import math

import pytest
import torch

from slimkernels.ratecontrol import pick_width, rd_table, width_for_target_bpp

ROWS = [{"width": 24, "bpp": 1.0, "psnr": 34.0}, {"width": 16, "bpp": 0.6, "psnr": 31.0},
        {"width": 8, "bpp": 0.3, "psnr": 27.0}]


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_pick_width_follows_the_rules_in_any_row_order(order):
    """(Rows not widest first gave the wrong width: an unreachable bpp target picked the
    middle width instead of the narrowest.)"""
    rows = [ROWS[i] for i in order]
    assert pick_width(rows, target_bpp=2.0) == 24          # the widest that fits
    assert pick_width(rows, target_bpp=0.7) == 16
    assert pick_width(rows, target_bpp=0.1) == 8           # none fits: the narrowest
    assert pick_width(rows, target_psnr=30.0) == 16        # the narrowest that reaches it
    assert pick_width(rows, target_psnr=20.0) == 8
    assert pick_width(rows, target_psnr=40.0) == 24        # none reaches it: the widest


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_pick_width_refuses_targets_that_are_not_finite_positive(bad):
    for kw in ({"target_bpp": bad}, {"target_psnr": bad}):
        with pytest.raises(ValueError, match="finite number > 0"):
            pick_width(ROWS, **kw)


class _Unsorted:
    """A Codec whose widths are not listed widest first; its file size grows with the width."""
    widths = [8, 24, 16]

    def compress(self, x, width, precision="auto"):
        return bytes(width * 10)

    def decompress(self, data, precision="auto"):
        return torch.zeros(1, 3, 4, 4)


def test_rd_table_is_widest_first_for_a_codec_listing_widths_in_any_order():
    x = torch.zeros(1, 3, 4, 4)
    rows = rd_table(_Unsorted(), x)
    assert [r["width"] for r in rows] == [24, 16, 8] and rows[0]["psnr"] == math.inf
    bpp24 = rows[0]["bpp"]
    assert width_for_target_bpp(_Unsorted(), x, bpp24 + 1) == 24
    assert width_for_target_bpp(_Unsorted(), x, 1e-6) == 8


@pytest.mark.parametrize("bad", ["1", None, 10 ** 400, [0.5], True])
def test_targets_that_are_not_numbers_are_named(bad):
    """("must be real number, not str", an OverflowError for an int beyond float range; True
    was a target of 1.0.)"""
    from slimkernels.ratecontrol import compress_to_target_bpp, width_for_target_psnr
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="target bpp must be a finite number > 0"):
        compress_to_target_bpp(_Unsorted(), x, bad)
    with pytest.raises(ValueError, match="target PSNR must be a finite number > 0"):
        width_for_target_psnr(_Unsorted(), x, bad)
    with pytest.raises(ValueError, match="the target must be a finite number > 0" if bad
                       is not None else "give exactly one of target_bpp and target_psnr"):
        pick_width(ROWS, target_bpp=bad)


def test_a_codec_without_widths_is_named():
    """(compress_to_target_bpp raised UnboundLocalError: the loop over no widths set nothing.)"""
    from slimkernels.ratecontrol import compress_to_target_bpp

    class NoWidths(_Unsorted):
        widths = []
    with pytest.raises(ValueError, match="NoWidths has no widths to choose from"):
        compress_to_target_bpp(NoWidths(), torch.zeros(1, 3, 4, 4), 1.0)
    with pytest.raises(ValueError, match="NoWidths has no widths to choose from"):
        rd_table(NoWidths(), torch.zeros(1, 3, 4, 4))   # (it said "no rate-distortion rows")


def test_the_read_image_pair_is_named():
    """(rd_table / width_for_target_bpp of read_image's (x, note) pair: AttributeError
    "'tuple' object has no attribute 'shape'".)"""
    from slimkernels import ratecontrol
    from slimkernels.models import SlimCAE
    m = SlimCAE(widths=(16, 8))
    pair = (torch.rand(1, 3, 16, 16), None)
    for fn, args in ((ratecontrol.rd_table, ()), (ratecontrol.width_for_target_bpp, (1.0,)),
                     (ratecontrol.compress_to_target_bpp, (1.0,)),
                     (ratecontrol.width_for_target_psnr, (30.0,))):
        with pytest.raises(TypeError, match=r"expects the image as a tensor, got tuple "
                                            r"\(slimkernels.io.read_image returns \(x, note\): "
                                            r"pass x\)"):
            fn(m, pair, *args)


# -- audit (forty-eighth sitting) ----------------------------------------------------------------
def test_unreachable_targets_fall_back_to_the_closest_width():
    """No width reaches the target: the fallback was the widest (PSNR) or the narrowest (bpp)
    width, which on small images need not be the closest (an 8x8 crop: 38.7 dB at the widest
    against 43.1 dB at the next)."""
    rows = [{"width": 24, "bpp": 1.0, "psnr": 38.7}, {"width": 16, "bpp": 0.5, "psnr": 43.1},
            {"width": 8, "bpp": 0.6, "psnr": 34.0}]
    assert pick_width(rows, target_psnr=45.0) == 16   # the highest PSNR
    assert pick_width(rows, target_bpp=0.1) == 16     # the smallest file
    tie = [{"width": 24, "bpp": 0.5, "psnr": 40.0}, {"width": 8, "bpp": 0.5, "psnr": 40.0}]
    assert pick_width(tie, target_bpp=0.1) == 8 and pick_width(tie, target_psnr=50.0) == 8


class _Sizes:
    """A Codec whose file sizes by width are given."""
    def __init__(self, sizes):
        self.sizes = sizes
        self.widths = sorted(sizes, reverse=True)

    def compress(self, x, width, precision="auto"):
        return bytes(self.sizes[width])

    def decompress(self, data, precision="auto"):
        return torch.zeros(1, 3, 4, 4)


def test_compress_to_target_bpp_falls_back_to_the_smallest_file():
    from slimkernels.ratecontrol import compress_to_target_bpp
    x = torch.zeros(1, 3, 4, 4)
    w, data, fits = compress_to_target_bpp(_Sizes({24: 30, 16: 20, 8: 25}), x, 1.0)
    assert (w, len(data), fits) == (16, 20, False)
    w, data, fits = compress_to_target_bpp(_Sizes({24: 30, 16: 2, 8: 1}), x, 1.0)
    assert (w, len(data), fits) == (16, 2, True)


def test_rd_table_of_an_image_that_records_a_gradient_warns_nothing():
    """(torch's UserWarning "Converting a tensor with requires_grad=True to a scalar".)"""
    import warnings
    x = torch.zeros(1, 3, 4, 4, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = rd_table(_Unsorted(), x)
    assert [r["width"] for r in rows] == [24, 16, 8]
