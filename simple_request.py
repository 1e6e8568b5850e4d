"""Post images to the gateway and print their top predictions.

    python simple_request.py cat.jpg
    python simple_request.py photos/ --url http://127.0.0.1:8080/predict --concurrency 8 --output answers.jsonl
    python simple_request.py cat.jpg --model efficientnet_lite1 [--version 2] [--top-k 3]
    python simple_request.py --list-models --url http://127.0.0.1:8080
    python simple_request.py photos/ --task --output results.jsonl     # one task (POST /v1/tasks), then poll
    python simple_request.py --task-id 3f2a... --output results.jsonl  # resume waiting on a task

Prints `1. Egyptian_cat: 0.8128` lines per image (a progress bar on stderr for more than one image).
A 503 answer is retried after its Retry-After seconds (at most --retries times, each wait at most 30 s).

Exit codes: 0 every image was answered; 1 a request or an image failed (an error answer, no
connection, a task CANCELLED or EXPIRED, or --list-models could not list); 2 bad usage; 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from urllib.parse import urlsplit, urlunsplit

import requests
from tqdm import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# The predict endpoints the gateway's base URL can be given as: /predict and /v1/models/<name>[/versions/<v>]/predict
PREDICT_PATH = re.compile(r"(/v1/models/[^/]+(/versions/[^/]+)?)?/predict/?$")
MAX_RETRY_WAIT_S = 30.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def image_paths(inputs: list[str]) -> list[str]:
    """Files as given, and the images inside any folder given."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, name) for name in os.listdir(item)
                            if name.lower().endswith(IMAGE_SUFFIXES))
        else:
            paths.append(item)
    return paths


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
    """`send()` again after each 503 (SERVER_BUSY, QUEUE_UNAVAILABLE ...) as its Retry-After says, `retries` times."""
    for _ in range(max(0, retries)):
        response = send()
        if response.status_code != 503:
            return response
        time.sleep(retry_after_s(response))
    return send()


def classify(session: requests.Session, url: str, path: str, fields: dict[str, str], api_key: str | None,
             timeout_s: float, retries: int = 0) -> tuple[int, dict]:
    """(HTTP status, JSON body) for one image file, sent with the form `fields` (top_k, model, version)."""
    headers = {"X-API-Key": api_key} if api_key else {}
    with open(path, "rb") as image:
        def send() -> requests.Response:
            image.seek(0)
            return session.post(url, files={"image": image}, data=fields, headers=headers, timeout=timeout_s)
        return status_and_body(with_retries(send, retries))


def status_and_body(response: requests.Response) -> tuple[int, dict]:
    try:
        return response.status_code, response.json()
    except ValueError:
        error = {"code": "BAD_RESPONSE", "message": response.text[:200]}
        return response.status_code, {"success": False, "error": error}


def connection_error(exc: Exception) -> dict:
    return {"success": False, "error": {"code": "CONNECTION_ERROR", "message": str(exc)}}


def format_result(status: int | None, body: dict) -> str:
    if body.get("success") and "detections" in body:      # a detector's answer: scored boxes
        lines = [f"{i}. {d['label']}: {d['score']:.4f} {d['box']}" for i, d in enumerate(body["detections"], 1)]
    elif body.get("success") and "predictions" in body:
        lines = [f"{i}. {p['label']}: {p['probability']:.4f}" for i, p in enumerate(body["predictions"], 1)]
    elif body.get("success"):                             # a pipeline's answer: its JSON
        lines = [json.dumps({k: v for k, v in body.items() if k not in ("success", "id", "index", "filename")})]
    else:
        error = body.get("error", {})
        where = "" if status is None else f" {status}"           # a task's result has no status of its own
        lines = [f"error{where} {error.get('code')}: {error.get('message')}"]
    return "\n".join(lines)


def format_models(listing: list[dict]) -> str:
    """One line per version, newest first: `toy (default)  v2  READY        (1 worker)`."""
    rows = []
    for model in listing:
        name = model["name"] + (" (default)" if model.get("default") else "")
        for version in model.get("versions", []):
            workers = version.get("live_workers", 0)
            reason = f"  {version['reason']}" if version.get("reason") else ""
            rows.append((name, f"v{version['version']}", version["state"],
                         f"({workers} worker{'' if workers == 1 else 's'}){reason}"))
    widths = [max((len(row[column]) for row in rows), default=0) for column in range(3)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
                     for row in rows)


def list_models(args: argparse.Namespace) -> int:
    """Print the served models and their versions from GET /v1/models; 1 when it cannot be read."""
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        status, body = status_and_body(with_retries(
            lambda: requests.get(models_url(args.url), headers=headers, timeout=args.timeout), args.retries))
    except requests.RequestException as exc:
        status, body = 0, connection_error(exc)
    listed = status == 200 and isinstance(body.get("models"), list)
    if args.json:
        print(json.dumps(body))
    elif listed:
        print(format_models(body["models"]) or "no models served")
    else:
        print(format_result(status, body if "error" in body else {"error": {"code": f"HTTP_{status}"}}))
    return EXIT_OK if listed else EXIT_FAILED


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="Classify images with the gateway.",
                                     epilog="exit codes: 0 all answered, 1 a failure, 2 bad usage, 130 interrupted")
    parser.add_argument("images", nargs="*", help="image files or folders")
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:5000/predict"),
                        help="the gateway (http://host:port) or its /predict URL")
    parser.add_argument("--model", help="the served model to ask (default: the server's default model)")
    parser.add_argument("--version", help="pin a version of the model (default: its newest ready version)")
    parser.add_argument("--list-models", action="store_true", help="print the served models and versions, then exit")
    parser.add_argument("--top-k", type=int, help="how many predictions (server default 5)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"), help="X-API-Key, if the server needs one")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="retries of a 503 answer, after its Retry-After")
    parser.add_argument("--output", help="write every answer to this file as JSON lines")
    parser.add_argument("--json", action="store_true", help="print the raw JSON responses, one per line")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    tasks = parser.add_argument_group("tasks (POST /v1/tasks: the server works through the images)")
    tasks.add_argument("--task", action="store_true", help="send all the images as one task and wait for it")
    tasks.add_argument("--task-id", help="wait for an existing task and fetch its results")
    tasks.add_argument("--models", help="with --task: several models, comma-separated")
    tasks.add_argument("--pipeline", help="with --task: a pipeline instead of a model")
    tasks.add_argument("--poll", type=float, default=0.5, help="with --task: seconds between status polls")
    args = parser.parse_args(argv)
    if args.list_models and (args.images or args.task or args.task_id):
        parser.error("--list-models takes no images" if args.images else "--list-models takes no task")
    if args.task_id and args.images:
        parser.error("--task-id waits for an existing task: give no images")
    if (args.models or args.pipeline) and not args.task:
        parser.error("--models and --pipeline go with --task")
    paths = image_paths(args.images)
    if not (args.list_models or args.task_id) and not paths:
        parser.error("no images found" if args.images else "give image files or folders (or --list-models)")
    return args, paths


def predict_all(args: argparse.Namespace, paths: list[str], output) -> int:
    """Every image through POST /predict, `--concurrency` at a time; the answers printed in order."""
    session = requests.Session()
    fields = {name: str(value) for name, value in
              (("top_k", args.top_k), ("model", args.model), ("version", args.version)) if value}

    def run(path: str) -> tuple[str, int, dict]:
        try:
            return path, *classify(session, predict_url(args.url), path, fields, args.api_key, args.timeout,
                                   args.retries)
        except (OSError, requests.RequestException) as exc:
            return path, 0, connection_error(exc)

    failures = 0
    bar = tqdm(total=len(paths), unit="image", file=sys.stderr, disable=len(paths) < 2 or args.no_progress)
    with bar, ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        futures = [pool.submit(run, path) for path in paths]
        for future in futures:
            future.add_done_callback(lambda _: bar.update())
        for future in futures:
            path, status, body = future.result()
            failures += not body.get("success")
            record = {"file": path, "status": status, **body}
            if output:
                output.write(json.dumps(record) + "\n")
            show(json.dumps(record) if args.json else
                 (f"{path}:\n" if len(paths) > 1 else "") + format_result(status, body))
    return EXIT_FAILED if failures else EXIT_OK


def show(text: str) -> None:
    """A line on stdout that leaves the progress bar (on stderr) whole."""
    tqdm.write(text, file=sys.stdout)


def main(argv: list[str] | None = None) -> int:
    args, paths = parse_args(argv)
    if args.list_models:
        return list_models(args)
    try:
        with open(args.output, "w") if args.output else nullcontext() as output:
            if args.task or args.task_id:
                import client_tasks
                return client_tasks.run(args, paths, output)
            return predict_all(args, paths, output)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:                 # `| head`: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
