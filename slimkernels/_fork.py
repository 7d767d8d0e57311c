"""Whether this process is a ``fork()``ed child of the process that first imported slimkernels.

GNU OpenMP cannot run in a forked child once its threads existed in the parent (a parallel
region waits for threads that are gone), so ``coding.encode/decode(pool="openmp")`` codes on the
coder's own, fork-safe pool in such a child. The process id is recorded when ``slimkernels`` is
imported (its ``__init__`` imports this module): a child forked from a process that had not
imported slimkernels yet cannot be told apart from a fresh process.
"""
import os
import warnings

_IMPORTED_IN = os.getpid()


def forked_since_import() -> bool:
    """True in a ``fork()``ed child (or grandchild) of the process that imported slimkernels."""
    return os.getpid() != _IMPORTED_IN


def one_thread_in_forked_child(op: str, depth: int = 1) -> None:
    """In a ``fork()``ed child whose torch runs several threads, set torch's thread count to 1
    before ``op`` (``read_image``, ``load_model``, ``compress`` / ``decompress`` on the CPU),
    with a RuntimeWarning saying so: the transforms' kernels and torch's CPU ops run GNU OpenMP
    regions, which wait for good for the parent's threads in such a child
    (``ProcessPoolExecutor()``'s default workers hung without a word). Whether the parent ever
    started them cannot be told, so every forked child runs one thread; start workers with
    ``"spawn"`` / ``"forkserver"`` for several. ``depth``: the caller's frames between this call
    and its user's (the warning names the user's line)."""
    if not forked_since_import():
        return
    import torch
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
        warnings.warn(f"slimkernels {op}: this process was fork()ed from the one that imported "
                      f"slimkernels, where OpenMP's threads cannot run: torch's thread count set "
                      f"from {n} to 1 (a parallel op waited for good otherwise); start worker "
                      f"processes with multiprocessing's 'spawn' or 'forkserver' method to run "
                      f"several threads in each", RuntimeWarning, stacklevel=2 + depth)
