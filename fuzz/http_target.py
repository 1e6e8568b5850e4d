"""Fuzz target: the embedded web server's HTTP/1.1 request parser (http11.py) on raw request bytes.

    python -m fuzz.http_target -max_total_time=1800 fuzz/corpus/http

The bytes up to the first blank line go to parse_head, the rest (when the head says chunked) to a
Chunked decoder in two pieces. Anything but a Head or http11.BadRequest (with a 4xx status) is a
finding, as is a decoded chunked body longer than what was sent, or an input over 2 s or 500 MB.
"""
from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["image_gateway.front.http11"]):
    from image_gateway.front import http11

from fuzz import Finding, run  # noqa: E402


def check_one(data: bytes) -> None:
    head_bytes, blank, rest = data.partition(b"\r\n\r\n")
    if not blank or len(head_bytes) > http11.MAX_HEADER_BYTES:
        return
    try:
        head = http11.parse_head(head_bytes)
        if head.chunked:
            decoder, middle = http11.Chunked(), len(rest) // 2
            first, _ = decoder.feed(rest[:middle])
            second, past_end = decoder.feed(rest[middle:])
            if len(first) + len(second) + len(past_end) > len(rest):
                raise Finding("the chunked decoder returned more bytes than it was given")
    except http11.BadRequest as exc:
        if not 400 <= exc.status < 500:
            raise Finding(f"BadRequest with status {exc.status}") from exc


def main() -> None:
    run(check_one)


if __name__ == "__main__":
    main()
