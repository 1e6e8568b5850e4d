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


def test_the_claim_thread_claims_when_the_model_asks():
    claimed = Claimed(capacity=4)
    assert claimed.room(timeout_s=0.05) == 0                  # nobody asked: no claim ahead of the model
    threading.Timer(0.05, lambda: claimed.take(4, timeout_s=2)).start()
    assert claimed.room(timeout_s=2) == 4                     # the model waits with nothing: claim a batch
    claimed.add([1])                                          # what the claim brought goes to the waiting model
    deadline = time.monotonic() + 2
    while claimed.items and time.monotonic() < deadline:
        time.sleep(0.01)
    assert claimed.items == [] and claimed.room(timeout_s=0.05) == 0   # a partial batch: ask again when free

    claimed.add([1, 2, 3])
    assert claimed.take(4, timeout_s=0) == [1, 2, 3] and claimed.room(timeout_s=0.05) == 0


def test_a_full_batch_claims_the_next_one_while_the_model_runs():
    claimed = Claimed(capacity=2)
    claimed.add([1, 2])
    assert claimed.room(timeout_s=0.05) == 0                  # full: no room
    assert claimed.take(2, timeout_s=0) == [1, 2]
    assert claimed.room(timeout_s=0.05) == 2                  # the queue is deep: fetch the next batch now


def test_a_model_waiting_for_a_fuller_batch_asks_for_more():
    claimed = Claimed(capacity=4)
    claimed.add([1])
    threading.Timer(0.05, lambda: claimed.take(4, timeout_s=2, more_within_s=2)).start()
    assert claimed.room(timeout_s=2) == 3


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
