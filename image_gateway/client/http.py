"""The client's side of the gateway's HTTP answers: its URLs, retries after 503, and how an answer prints."""
from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import requests
from tqdm import tqdm

# The predict endpoints the gateway's base URL can be given as: /predict and /v1/models/<name>[/versions/<v>]/predict
PREDICT_PATH = re.compile(r"(/v1/models/[^/]+(/versions/[^/]+)?)?/predict/?$")
MAX_RETRY_WAIT_S = 30.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def predict_url(url: str) -> str:
    """Accept the gateway's base URL as well as its /predict URL."""
    return url if urlsplit(url).path.rstrip("/").endswith("/predict") else url.rstrip("/") + "/predict"


def gateway_url(url: str, path: str) -> str:
    """An endpoint of the gateway (`/v1/models`, `/v1/tasks`), from its base URL or any of its predict URLs."""
    parts = urlsplit(url)
    base = PREDICT_PATH.sub("", parts.path).rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, base + path, "", ""))


def models_url(url: str) -> str:
    return gateway_url(url, "/v1/models")


def retry_after_s(response: requests.Response) -> float:
    """The answer's Retry-After in seconds (1 when absent or a date), at most MAX_RETRY_WAIT_S."""
    raw = response.headers.get("Retry-After", "1")
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_WAIT_S)
    except ValueError:
        return 1.0


def with_retries(send: Callable[[], requests.Response], retries: int) -> requests.Response:
    """`send()` again after each 503 (SERVER_BUSY, QUEUE_UNAVAILABLE ...) or 429 (RATE_LIMITED) as its Retry-After
    says, `retries` times."""
    for _ in range(max(0, retries)):
        response = send()
        if response.status_code not in (429, 503):
            return response
        time.sleep(retry_after_s(response))
    return send()


def status_and_body(response: requests.Response) -> tuple[int, dict]:
    try:
        return response.status_code, response.json()
    except ValueError:
        error = {"code": "BAD_RESPONSE", "message": response.text[:200]}
        return response.status_code, {"success": False, "error": error}


def connection_error(exc: Exception) -> dict:
    return {"success": False, "error": {"code": "CONNECTION_ERROR", "message": str(exc)}}


def format_result(status: int | None, body: dict) -> str:
    if body.get("success") and "texts" in body:           # an OCR pipeline's answer: one line per text read
        lines = [f"{i}. {t['text']}: {t['score']:.4f} {t['box']}" for i, t in enumerate(body["texts"], 1)]
        lines = lines or ["(no text found)"]
    elif body.get("success") and "detections" in body:    # a detector's answer: scored boxes
        lines = [f"{i}. {d['label']}: {d['score']:.4f} {d['box']}" for i, d in enumerate(body["detections"], 1)]
    elif body.get("success") and "predictions" in body:
        lines = [f"{i}. {p['label']}: {p['probability']:.4f}" for i, p in enumerate(body["predictions"], 1)]
    elif body.get("success") and isinstance(body.get("frames"), list):     # a frames pipeline's answer
        lines = frame_lines(body)
    elif body.get("success"):                             # a pipeline's answer: its JSON
        lines = [json.dumps({k: v for k, v in body.items() if k not in ("success", "id", "index", "filename")})]
    else:
        error = body.get("error", {})
        where = "" if status is None else f" {status}"           # a task's result has no status of its own
        lines = [f"error{where} {error.get('code')}: {error.get('message')}"]
    return "\n".join(lines)


def frame_lines(body: dict) -> list[str]:
    """A line per frame (its index, time and first label or box), then each label's best probability over the
    frames (`merge.max`, the first five)."""
    lines = []
    for frame in body["frames"]:
        found = frame.get("predictions") or frame.get("detections") or frame.get("texts") or []
        top = found[0] if found else {}
        what = (f"{top['label']}: {top['probability']:.4f}" if "probability" in top else
                f"{len(found)} found, first {top.get('label', top.get('text'))}: {top.get('score', 0):.4f}" if top
                else "nothing found")
        lines.append(f"frame {frame['index']} at {frame['timestamp']:.2f} s: {what}")
    best = body.get("merge", {}).get("max", [])
    if best:
        lines.append(f"best of {len(body['frames'])} frames:")
        lines += [f"{i}. {p['label']}: {p['probability']:.4f} (frame {p['index']})" for i, p in enumerate(best[:5], 1)]
    return lines


def show(text: str) -> None:
    """A line on stdout that leaves the progress bar (on stderr) whole."""
    tqdm.write(text, file=sys.stdout)
