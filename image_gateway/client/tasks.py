"""The client's task mode: many images as one task (POST /v1/tasks), progress while it runs, then its results.

    python simple_request.py photos/ --task --output results.jsonl [--model M | --models A,B | --pipeline P]
    python simple_request.py --task-id 3f2a... --output results.jsonl      # wait again for a task

The task id is printed on stderr at once, so an interrupted wait can be resumed with --task-id. The
results are fetched a page at a time (offset/limit) once the task has ended, printed like single
answers, and written to --output as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import time
from contextlib import ExitStack, nullcontext

import requests
from tqdm import tqdm

from image_gateway.client.http import (
    EXIT_FAILED,
    EXIT_OK,
    connection_error,
    format_result,
    gateway_url,
    show,
    status_and_body,
    with_retries,
)

ENDED = ("DONE", "CANCELLED", "EXPIRED")
PAGE = 500              # results per GET (the server allows up to 1000)
MAX_POLL_S = 5.0


def run(args: argparse.Namespace, paths: list[str], output) -> int:
    session = requests.Session()
    session.headers.update({"X-API-Key": args.api_key} if args.api_key else {})
    try:
        task_id = args.task_id or create(session, args, paths)
        if task_id is None:
            return EXIT_FAILED
        report = wait(session, args, task_id)
        if report is None:
            return EXIT_FAILED
        failures = write_results(session, args, task_id, output)
    except requests.RequestException as exc:
        show(format_result(0, connection_error(exc)))
        return EXIT_FAILED
    return EXIT_OK if report["state"] == "DONE" and not failures else EXIT_FAILED


def create(session: requests.Session, args: argparse.Namespace, paths: list[str]) -> str | None:
    """POST /v1/tasks with every image as a multipart `image` part; the task id, or None (error printed)."""
    fields = {name: str(value) for name, value in (("top_k", args.top_k), ("model", args.model),
                                                   ("models", args.models), ("pipeline", args.pipeline),
                                                   ("type", args.type)) if value}
    with ExitStack() as files:
        handles = [files.enter_context(open(path, "rb")) for path in paths]

        def send() -> requests.Response:
            parts = []
            for path, handle in zip(paths, handles, strict=True):
                handle.seek(0)
                kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
                parts.append(("image", (os.path.basename(path), handle, kind)))
            return session.post(gateway_url(args.url, "/v1/tasks"), files=parts, data=fields, timeout=args.timeout)

        status, body = status_and_body(with_retries(send, args.retries))
    if status != 202:
        show(format_result(status, body))
        return None
    print(f"task {body['task_id']}: {body['images']} images (resume waiting with --task-id {body['task_id']})",
          file=sys.stderr)
    return body["task_id"]


def wait(session: requests.Session, args: argparse.Namespace, task_id: str) -> dict | None:
    """Poll GET /v1/tasks/<id> (no results) until the task ends, with a progress bar; its last report."""
    url, interval = gateway_url(args.url, f"/v1/tasks/{task_id}"), max(0.05, args.poll)
    bar = None
    while True:
        status, report = status_and_body(with_retries(
            lambda: session.get(url, params={"limit": 0}, timeout=args.timeout), args.retries))
        if status != 200:
            show(format_result(status, report))
            return None
        if bar is None:         # one result per image and model (or pipeline)
            bar = tqdm(total=report["total"], unit="result", file=sys.stderr, disable=args.no_progress,
                       desc=f"task {task_id[:8]}")
        with bar if report["state"] in ENDED else nullcontext():
            bar.update(report["done"] - bar.n)
            bar.set_postfix(state=report["state"], failed=report["failed"])
        if report["state"] in ENDED:
            return report
        time.sleep(interval)
        interval = min(interval * 1.5, MAX_POLL_S)


def write_results(session: requests.Session, args: argparse.Namespace, task_id: str, output) -> int:
    """Every result, a page at a time: printed, and written to `output` as JSON lines. The failures."""
    url, offset, failures = gateway_url(args.url, f"/v1/tasks/{task_id}"), 0, 0
    while offset is not None:
        page = {"offset": offset, "limit": PAGE}
        status, report = status_and_body(with_retries(
            lambda page=page: session.get(url, params=page, timeout=args.timeout), args.retries))
        if status != 200:
            show(format_result(status, report))
            return failures + 1
        for result in report["results"]:
            failures += not result.get("success")
            record = {"task_id": task_id, **result}
            if output:
                output.write(json.dumps(record) + "\n")
            target = result.get("model") or result.get("pipeline") or ""
            show(json.dumps(record) if args.json else
                 f"{result.get('filename') or result['index']} [{target}]:\n{format_result(None, result)}")
        offset = report["next_offset"]
    state = report["state"]
    if state != "DONE":
        show(f"task {task_id} {state}")
    return failures
