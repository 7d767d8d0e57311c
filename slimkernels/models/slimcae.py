"""SlimCAE: one compressive autoencoder holding several sub-networks of decreasing width."""
from __future__ import annotations

from typing import Dict, Sequence

from ..codec import SlimCodec, SlimSequential  # noqa: F401  (SlimSequential: re-exported)
from ..codec import latent_indexes as _indexes  # noqa: F401  (kept for bench/e2e.py)
from ..nn import SlimConv2d, SlimConvTranspose2d, SlimEntropyBottleneck, make_gdn

DEFAULT_WIDTHS = (192, 144, 96, 72, 48)


class SlimCAE(SlimCodec):
    """The SlimCAE architecture of the official code (Yang et al. 2021).

    Encoder ``g_a``: conv 9x9/4 -> GDN -> conv 5x5/2 -> GDN -> conv 5x5/2 (no bias) -> GDN.
    Decoder ``g_s``: IGDN -> tconv 5x5/2 -> IGDN -> tconv 5x5/2 -> IGDN -> tconv 9x9/4 -> 3.
    Width ``w`` uses the first ``w`` channels of every hidden layer and its own entropy model.
    ``forward``, ``compress``, ``decompress``, ``decompress_latent``, ``update``, ``aux_loss``
    and ``model_id`` come from :class:`slimkernels.codec.SlimCodec`.

    Args:
        widths: the sub-network widths (default 192, 144, 96, 72, 48); the largest is the full size.
        gdn: ``"switch"`` (one GDN per width, default, as released), ``"slim"`` or ``"slim+"``.
    """

    downsampling = 16

    def __init__(self, widths: Sequence[int] = DEFAULT_WIDTHS, gdn: str = "switch"):
        super().__init__(widths)
        widths = self.widths
        self.gdn_variant = gdn
        N = widths[0]
        self.g_a = SlimSequential(
            SlimConv2d(3, N, 9, stride=4, padding=4, widths=widths),
            make_gdn(gdn, widths),
            SlimConv2d(N, N, 5, stride=2, padding=2, widths=widths),
            make_gdn(gdn, widths),
            SlimConv2d(N, N, 5, stride=2, padding=2, bias=False, widths=widths),
            make_gdn(gdn, widths),
        )
        self.g_s = SlimSequential(
            make_gdn(gdn, widths, inverse=True),
            SlimConvTranspose2d(N, N, 5, stride=2, padding=2, output_padding=1, widths=widths),
            make_gdn(gdn, widths, inverse=True),
            SlimConvTranspose2d(N, N, 5, stride=2, padding=2, output_padding=1, widths=widths),
            make_gdn(gdn, widths, inverse=True),
            SlimConvTranspose2d(N, 3, 9, stride=4, padding=4, output_padding=3),
        )
        self.entropy_bottleneck = SlimEntropyBottleneck(widths)

    def config(self) -> Dict:
        """The constructor arguments, enough to rebuild the architecture."""
        return {"widths": list(self.widths), "gdn": self.gdn_variant}
