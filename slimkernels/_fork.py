"""Whether this process is a ``fork()``ed child of the process that first imported slimkernels.

GNU OpenMP cannot run in a forked child once its threads existed in the parent (a parallel
region waits for threads that are gone), so ``coding.encode/decode(pool="openmp")`` codes on the
coder's own, fork-safe pool in such a child. The process id is recorded when ``slimkernels`` is
imported (its ``__init__`` imports this module): a child forked from a process that had not
imported slimkernels yet cannot be told apart from a fresh process.
"""
import os

_IMPORTED_IN = os.getpid()


def forked_since_import() -> bool:
    """True in a ``fork()``ed child (or grandchild) of the process that imported slimkernels."""
    return os.getpid() != _IMPORTED_IN
