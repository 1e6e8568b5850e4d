"""Coverage-guided fuzz targets (atheris + libFuzzer) for the parsers every request meets.

    python -m fuzz.image_target -max_total_time=1800 fuzz/corpus/image       # imaging.prepare_image
    python -m fuzz.request_target -max_total_time=1800 fuzz/corpus/request   # multipart/JSON through the app
    python -m fuzz.http_target -max_total_time=1800 fuzz/corpus/http         # the embedded server's HTTP parser
    python -m fuzz.weights_target -max_total_time=1800 fuzz/corpus/weights   # the PyTorch weights reader
    python -m fuzz.make_corpus                                               # rebuild the seed corpora

A finding is an exception other than errors.GatewayError (image path), a 500 INTERNAL_ERROR or an
answer without the JSON error envelope (requests), an error other than http11.BadRequest (HTTP), an
input that takes over 2 s (`-timeout=2`, added unless given) or makes the process' peak RSS grow by
over 500 MB (checked after every input).
libFuzzer saves the input to ./crash-<sha1> (timeout-..., oom-...); replay it with
`python -m fuzz.image_target crash-<sha1>`. New inputs that reach new code go into the first folder
given: pass an empty folder first to keep the saved corpus as it is
(`python -m fuzz.image_target /tmp/new fuzz/corpus/image`). tests/test_fuzz_smoke.py runs each target
briefly on the saved corpus; tests/test_fuzz_regressions.py replays every finding.
"""
from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
TIMEOUT_S = 2
MEMORY_LIMIT_MB = 500
DEFAULT_FLAGS = (f"-timeout={TIMEOUT_S}", "-rss_limit_mb=3072")
# The request target's first byte picks a path and a Content-Type (the rest is the body).
BOUNDARY = "fuzzboundary"
PATHS = ("/predict", "/v1/models/efficientnet_lite0/predict", "/v1/models/efficientnet_lite0/versions/1/predict",
         "/v1/pipelines/face_crops/predict", "/predict?top_k=2")
CONTENT_TYPES = (f"multipart/form-data; boundary={BOUNDARY}", "application/json", "application/x-www-form-urlencoded",
                 "text/plain", "multipart/form-data")


class Finding(AssertionError):
    """What a target raises for an input that breaks a promise (libFuzzer then saves the input)."""


def libfuzzer_argv(argv: list[str]) -> list[str]:
    """argv with this project's limits added where the command line does not set them."""
    given = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("-")}
    return [argv[0], *(flag for flag in DEFAULT_FLAGS if flag.split("=", 1)[0] not in given), *argv[1:]]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryGuard:
    """After each input: the process' peak RSS may not exceed its peak after setup by MEMORY_LIMIT_MB."""

    def __init__(self, limit_mb: float = MEMORY_LIMIT_MB):
        self.baseline_mb, self.limit_mb = peak_rss_mb(), limit_mb

    def check(self) -> None:
        grown_mb = peak_rss_mb() - self.baseline_mb
        if grown_mb > self.limit_mb:
            raise Finding(f"the peak RSS grew by {grown_mb:.0f} MB (limit {self.limit_mb} MB)")


def pick(selector: int) -> tuple[str, str]:
    """The path and Content-Type a request input's first byte names."""
    return PATHS[selector % len(PATHS)], CONTENT_TYPES[selector // len(PATHS) % len(CONTENT_TYPES)]


def run(check_one: Callable[[bytes], None]) -> None:
    """libFuzzer (atheris) on `check_one`, with the project's limits and the memory check after each input."""
    import atheris

    guard = MemoryGuard()

    def test_one_input(data: bytes) -> None:
        check_one(data)
        guard.check()

    atheris.Setup(libfuzzer_argv(sys.argv), test_one_input)
    atheris.Fuzz()
