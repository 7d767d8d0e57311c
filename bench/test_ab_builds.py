import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ab_builds  # noqa: E402
from slimkernels.ops import winograd as Wg  # noqa: E402


@pytest.mark.skipif(not Wg.winograd_available(), reason="no AVX2 Winograd transforms here")
def test_ab_builds_runs_against_itself(capsys):
    assert ab_builds.main([ab_builds.NEW.__file__, "--rounds", "1", "--threads", "1",
                           "--widths", "8", "--scale", "16"]) == 0
    assert capsys.readouterr().out.count("| 8 |") == 4
