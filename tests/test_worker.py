"""The worker's claim-ahead buffer: waits, capacity, order (no Redis needed for these)."""
import os
import threading
import time

from image_gateway.worker.loop import Claimed, lower_priority


def test_take_returns_the_oldest_items_up_to_count():
    claimed = Claimed(capacity=4)
    claimed.add([1, 2, 3])
    assert claimed.take(2, timeout_s=0) == [1, 2]
    assert claimed.take(5, timeout_s=0) == [3]


def test_take_waits_for_a_fuller_batch_only_as_long_as_asked():
    claimed = Claimed(capacity=8)
    claimed.add([1])
    started = time.monotonic()
    assert claimed.take(4, timeout_s=1, more_within_s=0.2) == [1]       # nothing more came
    assert 0.15 < time.monotonic() - started < 1.0

    claimed.add([1])
    threading.Timer(0.05, lambda: claimed.add([2, 3, 4])).start()
    started = time.monotonic()
    assert claimed.take(4, timeout_s=1, more_within_s=2.0) == [1, 2, 3, 4]
    assert time.monotonic() - started < 1.5                            # returned when full, not at 2 s


def test_room_blocks_while_full_and_frees_on_take():
    claimed = Claimed(capacity=2)
    claimed.add([1, 2])
    assert claimed.room(timeout_s=0.05) == 0
    threading.Timer(0.05, lambda: claimed.take(1, timeout_s=0)).start()
    assert claimed.room(timeout_s=2) == 1


def test_lower_priority_renices_the_calling_thread_what_it_starts_and_the_runtimes_threads_only():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen, pool_started, pool_done = {}, threading.Event(), threading.Event()
    pool = threading.Thread(target=lambda: (pool_started.set(), pool_done.wait(10)))   # a runtime's own thread
    pool.start()
    pool_started.wait(10)

    def model_thread():
        lower_priority(3, (pool.native_id, 2**22 + 1))      # the second id names no thread: skipped
        seen["self"] = os.getpriority(os.PRIO_PROCESS, 0)
        child = threading.Thread(target=lambda: seen.setdefault("child", os.getpriority(os.PRIO_PROCESS, 0)))
        child.start()
        child.join()

    thread = threading.Thread(target=model_thread)
    thread.start()
    thread.join()
    seen["pool"] = os.getpriority(os.PRIO_PROCESS, pool.native_id)
    pool_done.set()
    pool.join()
    assert seen == {"self": base + 3, "child": base + 3, "pool": base + 3}
    assert os.getpriority(os.PRIO_PROCESS, 0) == base      # the web tier's threads keep theirs
