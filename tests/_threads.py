"""Run a test body in several threads at once and collect what went wrong."""
import threading
from typing import Callable, List


def run_in_threads(work: Callable[[int], List], n: int = 4) -> List:
    """Call ``work(k)`` for ``k`` in ``range(n)``, each in its own thread, all at once. ``work``
    returns a list of failures (empty when all went well); an exception counts as one (its
    repr). Returns every failure of every thread."""
    failures: List = []
    lock = threading.Lock()

    def body(k):
        try:
            got = list(work(k))
        except Exception as e:  # noqa: BLE001 - reported to the test
            got = [repr(e)]
        with lock:
            failures.extend(got)
    ts = [threading.Thread(target=body, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return failures
