"""Process-wide set-up, done once by each entry point and never by importing a module or building an app.

The embedded default (embedded.main), a worker process (worker.main) and the WSGI module (wsgi) call
`prepare` before anything heavy loads: TensorFlow's log level and thread counts are read when it is
imported, and glibc's allocator threshold applies to the whole process.
"""
from __future__ import annotations

import os

from image_gateway import imaging, logs
from image_gateway.settings import Settings
from image_gateway.worker.threads import set_framework_threads


def prepare(config: Settings, *, web: bool, worker: bool) -> None:
    """Logging in the configured format; for a web tier the large-decode slots and the allocator; for a
    worker TensorFlow's threads. TensorFlow's C++ info lines are off in every process."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if config.keras_home:                       # Keras reads it itself, when it is imported
        os.environ["KERAS_HOME"] = os.path.expanduser(config.keras_home)
    logs.setup(config)
    if web:
        imaging.bound_decode_memory(config.max_large_decodes, config.decode_budget_mp)
    if worker:
        set_framework_threads(config)
