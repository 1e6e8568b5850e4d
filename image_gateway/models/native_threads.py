"""The CPU time of threads a runtime starts for itself, such as the XNNPACK pool of a multi-threaded
LiteRT interpreter: they do the model's work beside the calling thread, so the model's CPU counter
(gateway_model_cpu_seconds_total) includes them; otherwise bench charges their work to the serving path.

Linux: the threads are read from /proc/self/task and each one's CPU from its kernel clock. Elsewhere
none is found and nothing is added.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

_CREATING = threading.Lock()     # one runtime created at a time: the threads that appear are its own


@contextmanager
def started_threads() -> Iterator[set[int]]:
    """The native threads (ids) started inside the block, Python's own left out, in the set it yields."""
    found: set[int] = set()
    with _CREATING:
        before = _thread_ids()
        yield found
        found |= _thread_ids() - before - {thread.native_id for thread in threading.enumerate()}


def cpu_s(thread_ids: Iterable[int]) -> float:
    """CPU seconds these threads of this process have spent so far (one that ended counts 0)."""
    total = 0.0
    for thread_id in thread_ids:
        try:    # Linux's per-thread CPU clock id: ~tid << 3 | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED
            total += time.clock_gettime((~thread_id << 3) | 6)
        except OSError:
            pass
    return total


def _thread_ids() -> set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return set()
