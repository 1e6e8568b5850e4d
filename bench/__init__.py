"""The end-to-end benchmark (`python -m bench`): raw model baseline, per-stage CPU costs, then the
gateway under a closed-loop concurrency sweep. See bench/README.md."""
from __future__ import annotations

import time


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
