"""`classify_worker.py` whose model process dies (os._exit) on a marker image: a job that kills workers.

The marker is an image whose pixels are all POISON_VALUE; anything else is predicted as usual.
Used by tests/test_poison.py as a real worker process.
"""
import os
import sys

import numpy as np

from image_gateway.worker import loop as worker
from image_gateway.worker.main import main

POISON_VALUE = 7
real_answer_fields = worker.answer_fields


def answer_fields_or_die(model, jobs):
    if any(np.all(job.array == POISON_VALUE) for job in jobs):
        os._exit(3)                      # like a segfault in a native kernel: no cleanup, no answer
    return real_answer_fields(model, jobs)


worker.answer_fields = answer_fields_or_die

if __name__ == "__main__":
    sys.exit(main())
