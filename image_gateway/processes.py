"""Child processes and small HTTP probes: how bench, deploy and the tests start, stop and poll a process.

One stop sequence for every child: ask it to stop (SIGTERM, or the signal it treats as graceful),
wait, and only then SIGKILL, so a child always gets the chance to finish what it holds.
"""
from __future__ import annotations

import ctypes
import http.client
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

PathLike = str | os.PathLike


def start(args: Sequence[str], *, log_path: PathLike | None = None, append: bool = False,
          env: Mapping[str, str] | None = None, cwd: PathLike | None = None, new_session: bool = False,
          die_with_parent: bool = False, inherit_output: bool = False,
          pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start `args` with stdout and stderr into `log_path` (truncated, or appended to), or this process'
    own (inherit_output), or discarded.

    new_session: a terminal's Ctrl-C reaches only the parent, which then stops the child in order.
    die_with_parent: the child gets SIGTERM if the parent dies without stopping it (Linux only).
    pass_fds: file descriptors the child inherits (pipes to it).
    """
    preexec = _die_with_parent if die_with_parent and sys.platform == "linux" else None
    options = dict(env=env, cwd=cwd, start_new_session=new_session, preexec_fn=preexec, pass_fds=tuple(pass_fds))
    if inherit_output:
        return subprocess.Popen(args, **options)
    if log_path is None:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **options)
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, **options)


def stop(process: subprocess.Popen | None, timeout_s: float, sig: int = signal.SIGTERM) -> int | None:
    """Ask `process` to stop with `sig`, wait up to `timeout_s`, then SIGKILL it. Its exit code (None
    for a process never started)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
    return wait_or_kill(process, timeout_s)


def wait_or_kill(process: subprocess.Popen, timeout_s: float) -> int:
    """Wait for the exit of a process already asked to stop; SIGKILL after `timeout_s`. Its exit code."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _die_with_parent() -> None:
    """In the child, before exec: PR_SET_PDEATHSIG, so the parent's death sends us SIGTERM."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET of `url` (http or https); (0, b"") when no answer came (refused, reset,
    timed out). Error statuses are answers: (503, body), not exceptions."""
    parts = urlsplit(url)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        connection.close()


def get_json(url: str, timeout_s: float = 5.0) -> Any | None:
    """The JSON document of a 200 answer to GET `url`; None for any other outcome."""
    status, body = http_get(url, timeout_s)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
