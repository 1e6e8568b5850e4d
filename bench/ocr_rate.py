"""OCR requests/s for one rendered text page through the gateway's `ocr` pipeline (`python -m bench --ocr`).

Starts `python run_server.py` with MODELS=ocr_det,ocr_rec and CACHE_TTL=0 (the same page every time: no
cached answer), renders one page of printed lines with Pillow (DejaVu Sans, as the README's example and the
tests do), then `--ocr-clients` closed-loop clients POST it to /v1/pipelines/ocr/predict for
`--ocr-duration` seconds after `--ocr-warmup`. An answer counts only when every line is read exactly.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import threading
import time
from pathlib import Path

import numpy as np

from bench import log, system
from bench.gateway import Gateway

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
LINES = ("Invoice 2024-117: total $1,284.50", "Paid by card on 12 March")
PATH = "/v1/pipelines/ocr/predict"
BOUNDARY = "----gateway-bench-ocr-5d1e"


def page_png(lines=LINES) -> bytes:
    """The README's page: 640 x 160 white, each line in 28 px DejaVu Sans."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 28)
    page = Image.new("RGB", (640, 60 * len(lines) + 40), "white")
    for row, text in enumerate(lines):
        ImageDraw.Draw(page).text((30, 30 + 60 * row), text, font=font, fill="black")
    out = io.BytesIO()
    page.save(out, format="PNG")
    return out.getvalue()


def multipart(png: bytes) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"page.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()
    return head + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def client(port: int, body: bytes, stop: threading.Event, outcomes: list, timeout_s: float) -> None:
    """POST the page until `stop`; each outcome is (done, latency_s, "ok" or what was wrong)."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    connection = None
    while not stop.is_set():
        started = time.perf_counter()
        try:
            connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
            connection.request("POST", PATH, body, headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            texts = [item.get("text") for item in answer.get("texts", [])]
            verdict = "ok" if response.status == 200 and texts == list(LINES) else f"{response.status} {texts}"
        except (OSError, http.client.HTTPException, ValueError) as exc:
            verdict, connection = f"0 {type(exc).__name__}", None
            stop.wait(0.05)
        done = time.perf_counter()
        outcomes.append((done, done - started, verdict))


def closed_loop(port: int, body: bytes, clients: int, duration_s: float, warmup_s: float, timeout_s: float) -> dict:
    stop, per_client = threading.Event(), [[] for _ in range(clients)]
    threads = [threading.Thread(target=client, args=(port, body, stop, out, timeout_s), daemon=True)
               for out in per_client]
    [thread.start() for thread in threads]
    time.sleep(warmup_s)
    busy_before, start = system.machine_busy_s(), time.perf_counter()
    time.sleep(duration_s)
    end, busy_after = time.perf_counter(), system.machine_busy_s()
    stop.set()
    [thread.join(timeout_s + 5) for thread in threads]
    inside = [o for out in per_client for o in out if start <= o[0] <= end]
    ok = [latency for _, latency, verdict in inside if verdict == "ok"]
    wrong = sorted({verdict for _, _, verdict in inside if verdict != "ok"})
    return {"requests_per_s": round(len(ok) / (end - start), 3), "ok": len(ok), "not_ok": len(inside) - len(ok),
            "not_ok_examples": wrong[:3], "clients": clients, "window_s": round(end - start, 2),
            "p50_ms": round(1000 * float(np.median(ok)), 1) if ok else None,
            "machine_busy_cores": round((busy_after - busy_before) / (end - start), 2)}


def measure(args: argparse.Namespace, log_dir: Path) -> dict:
    """Start the OCR gateway, run the clients on one page, stop it."""
    png = page_png()
    gateway = Gateway(log_dir / "ocr.gateway.log", {"MODELS": "ocr_det,ocr_rec", "CACHE_TTL": "0"}).start()
    try:
        log(f"ocr: {args.ocr_clients} clients on one {len(png)}-byte page of {len(LINES)} lines, "
            f"{args.ocr_warmup:g} s warm-up + {args.ocr_duration:g} s")
        result = closed_loop(gateway.port, multipart(png), args.ocr_clients, args.ocr_duration, args.ocr_warmup,
                             args.timeout)
    finally:
        gateway.stop()
    log(f"ocr: {result['requests_per_s']} requests/s (p50 {result['p50_ms']} ms), {result['not_ok']} not read "
        f"exactly")
    return {"ocr_requests_per_s": result["requests_per_s"], "ocr": {**result, "lines": list(LINES)}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ocr-clients", type=int, default=2, help="closed-loop OCR clients (2: one per core; "
                        "more only queue, and on a busy machine outlast REQUEST_TIMEOUT)")
    parser.add_argument("--ocr-duration", type=float, default=20.0, help="measured seconds (20)")
    parser.add_argument("--ocr-warmup", type=float, default=3.0, help="unmeasured seconds first (3)")
