"""Slimmable modules: convolutions, the GDN family and the per-width entropy model."""
from .conv import SlimConv2d, SlimConvTranspose2d
from .entropy import EntropyBottleneck, SlimEntropyBottleneck
from .gdn import GDN_VARIANTS, SlimGDN, SlimGDNPlus, SwitchGDN, make_gdn
from .parametrizers import LowerBound, NonNegativeParametrizer, lower_bound

__all__ = ["SlimConv2d", "SlimConvTranspose2d", "SlimGDN", "SwitchGDN", "SlimGDNPlus", "make_gdn",
           "GDN_VARIANTS",
           "EntropyBottleneck", "SlimEntropyBottleneck", "NonNegativeParametrizer", "LowerBound",
           "lower_bound"]
