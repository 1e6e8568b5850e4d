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


def test_lower_priority_renices_the_calling_thread_and_what_it_starts_only():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    seen = {}

    def model_thread():
        lower_priority(3)
        seen["self"] = os.getpriority(os.PRIO_PROCESS, 0)
        child = threading.Thread(target=lambda: seen.setdefault("child", os.getpriority(os.PRIO_PROCESS, 0)))
        child.start()
        child.join()

    thread = threading.Thread(target=model_thread)
    thread.start()
    thread.join()
    assert seen == {"self": base + 3, "child": base + 3}
    assert os.getpriority(os.PRIO_PROCESS, 0) == base      # the web tier's threads keep theirs
