"""slimkernels._amp.no_autocast: autocast off on any device type."""
import torch

from slimkernels._amp import no_autocast


def test_it_switches_an_enclosing_cpu_autocast_off():
    a = torch.rand(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with no_autocast("cpu"):
            assert not torch.is_autocast_enabled("cpu")
            assert (a @ a).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")


def test_a_device_without_autocast_gets_a_null_context():
    """meta has no autocast (torch.autocast("meta", enabled=False) raises "unsupported
    scalarType" on torch 2.4 .. 2.13): the block runs as it is."""
    a = torch.empty(4, 4, device="meta")
    with no_autocast("meta"):
        assert (a @ a).is_meta
