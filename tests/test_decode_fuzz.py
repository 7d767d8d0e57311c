"""Decoding any byte string is safe, end to end through the bundled model: a small deterministic
slice of sitting 39's fuzz campaign (~585,000 mutated decodes, none failing): every truncation,
payload mutations with both CRCs recomputed (so that they reach the range coder), header fields at
their extremes, another model's id, forged extreme latents and a forged symbol count. Each decode
returns a finite image in [0, 1] of the header's size or raises the format's own errors."""
import random
import struct
import zlib

import numpy as np
import pytest
import torch

from slimkernels import coding, container
from slimkernels.container import ModelMismatchError, SlimFormatError
from slimkernels.pretrained import load_model
from tests.test_coding import _varint


@pytest.fixture(scope="module")
def model():
    return load_model()


@pytest.fixture(scope="module")
def files(model):
    g = torch.Generator().manual_seed(0)
    out = []
    for (h, w), width, streams in [((48, 64), 48, 1), ((1, 1), 192, 2), ((33, 17), 96, 7)]:
        x = torch.rand(1, 3, h, w, generator=g)
        out.append(model.compress(x, width, streams=streams, precision="fp32"))
    return out


def _with_payload(d, payload, **fields):
    """``d`` with its payload (and header fields) replaced, both CRCs recomputed."""
    f = container.unpack(d)
    vals = dict(width=f.width, height=f.height, img_width=f.img_width, streams=f.streams,
                model_id=f.model_id)
    vals.update(fields)
    # (the format's own header layout; its fields masked to their widths, not range-checked as
    # pack() does: the extremes are the point)
    pre = container._FIXED.pack(container.MAGIC, container.FORMAT_VERSION, 0, vals["model_id"],
                                vals["width"] & 0xFFFF,
                                vals["height"] & 0xFFFFFFFF, vals["img_width"] & 0xFFFFFFFF,
                                vals["streams"] & 0xFF, 0)
    pre += struct.pack("<II", len(payload), zlib.crc32(payload))
    return pre + struct.pack("<I", zlib.crc32(pre)) + payload


def _decodes_safely(model, data):
    try:
        x = model.decompress(data, precision="fp32")
    except SlimFormatError:
        return
    f = container.unpack(data)
    assert tuple(x.shape) == (1, 3, f.height, f.img_width)
    assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_every_truncation_raises_slim_format_error(model, files):
    for d in files:
        for n in range(len(d)):
            with pytest.raises(SlimFormatError):
                model.decompress(d[:n])


def test_crc_fixed_payload_mutations_reach_the_coder_safely(model, files):
    rng = random.Random(1)
    for d in files:
        p = container.unpack(d).payload
        for _ in range(300):
            q = bytearray(p)
            op = rng.randrange(4)
            i = rng.randrange(len(q))
            if op == 0:
                q[i] ^= 1 << rng.randrange(8)
            elif op == 1:
                q[i] = rng.choice([0, 0xFF, 0x80, 0x7F])
            elif op == 2:
                q[i:i] = bytes([rng.randrange(256)])
            else:
                del q[i:i + rng.choice([1, 4])]
            _decodes_safely(model, _with_payload(d, bytes(q)))


@pytest.mark.parametrize("field,values", [
    ("height", [0, 1, 17, 1 << 20, (1 << 20) + 1, 0xFFFFFFFF]),
    ("img_width", [0, 1, 17, 1 << 20, (1 << 20) + 1, 0x80000000]),
    ("width", [0, 1, 47, 144, 0xFFFF]),
    ("streams", [0, 255]),
])
def test_header_extremes_with_valid_crc(model, files, field, values):
    for d in files:
        for v in values:
            _decodes_safely(model, _with_payload(d, container.unpack(d).payload, **{field: v}))


def test_other_model_id_is_a_model_mismatch(model, files):
    d = files[0]
    with pytest.raises(ModelMismatchError):
        model.decompress(_with_payload(d, container.unpack(d).payload, model_id=b"\x01" * 16))


@pytest.mark.parametrize("value", [2 ** 31 - 1, -2 ** 31, 100000])
def test_forged_extreme_latent_is_refused_or_finite(model, value):
    w = 48
    _, cdfs, lengths, offsets, idx = model._latent_plan(model.entropy_bottleneck.for_width(w), w)
    sym = np.full((1, w, 2, 3), value, np.int32)
    pl = coding.encode(sym, idx, cdfs, lengths, offsets, precision=16)
    data = container.pack(container.SlimFile(model_id=model.model_id(), width=w, height=32,
                                             img_width=48, streams=1, payload=pl))
    _decodes_safely(model, data)


def test_forged_symbol_count_allocates_nothing(model):
    # a 1 KB payload claiming the largest symbol count the generic size bound would admit
    w = 48
    _, cdfs, lengths, offsets, idx = model._latent_plan(model.entropy_bottleneck.for_width(w), w)
    side = 3000
    body = bytes(random.Random(2).randrange(256) for _ in range(1024))
    pl = bytes([1, 16]) + _varint(w * side * side) + _varint(1) + _varint(len(body)) + body
    # (the size bound's own refusal, before any allocation for the claimed symbols)
    with pytest.raises(ValueError, match=r"symbols need at least \d+ bytes with these tables"):
        coding.decode(pl, idx, cdfs, lengths, offsets, shape=(1, w, side, side))
