import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab_coder  # noqa: E402
from slimkernels import coding  # noqa: E402

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "slimkernels",
                      "assets")


def test_ab_coder_runs_against_itself(capsys):
    # the installed extension against a second load of itself: same bytes, one table row per
    # workload (the synthetic one and the bundled model's latent of the sample image at w=48)
    sample = os.path.join(ASSETS, sorted(f for f in os.listdir(ASSETS) if f.endswith(".png"))[0])
    assert ab_coder.main([coding._ext().__file__, "--rounds", "1", "--threads", "1",
                          "--widths", "48", "--image", sample, "--after-transform"]) == 0
    out = capsys.readouterr().out
    assert out.count("| Kodak-like synthetic | 1 |") == 1
    assert out.count("| model latent w=48 | 1 |") == 1
