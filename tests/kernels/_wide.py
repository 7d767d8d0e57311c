"""The shared part of the kernels' tests on tensors whose offsets pass 2^31 elements: a child
process under Triton's interpreter, with a 6.5 GB address-space limit, that reserves one bf16
storage of 2^31 + 2^18 elements (``big``, never touched but where small views read and write)."""
import os
import subprocess
import sys
import textwrap

import pytest

#: The child's first lines: ``big`` reserved (or "SKIP: ..." printed and exit 0), ``torch``
#: imported, ``g`` a seeded generator.
PRELUDE = textwrap.dedent(r"""
    import os, resource
    os.environ["TRITON_INTERPRET"] = "1"
    lim = int(6.5 * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    import torch
    try:
        big = torch.empty(2 ** 31 + 2 ** 18, dtype=torch.bfloat16)
    except (RuntimeError, MemoryError):
        print("SKIP: cannot reserve 4.3 GB of address space"); raise SystemExit(0)
    g = torch.Generator().manual_seed(0)
""")


def run_child(body: str, checks: int) -> None:
    """Run :data:`PRELUDE` + ``body`` (which prints "<name> ok <err>" per check and exits 3 when
    one is wrong); skip where the storage cannot be reserved; assert ``checks`` "ok" lines."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, TRITON_INTERPRET="1",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], env=env,
                       capture_output=True, text=True, timeout=600)
    if "SKIP:" in p.stdout:
        pytest.skip(p.stdout.strip())
    assert p.returncode == 0, (f"exit {p.returncode} (-11: a wrapped int32 offset, 3: wrong "
                               f"values)\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    assert p.stdout.count(" ok ") == checks, p.stdout
