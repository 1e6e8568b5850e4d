"""The WSGI side of the embedded front (PEP 3333): a request's environ, and one call of the app."""
from __future__ import annotations

import io
import sys

from image_gateway.front.http11 import Head
from image_gateway.settings import Settings


def environ(head: Head, config: Settings, peer: tuple, body, received: int, too_large: bool) -> dict:
    """The WSGI environ of a request whose body (`received` bytes, in the file `body`) has arrived whole;
    a chunked body arrives with its length. A body over the limit (`too_large`) is not passed on."""
    length = head.length if too_large and not head.chunked else received
    environ = {
        "REQUEST_METHOD": head.method, "SCRIPT_NAME": "", "QUERY_STRING": head.target.partition("?")[2],
        "PATH_INFO": head.path,
        "SERVER_NAME": config.host, "SERVER_PORT": str(config.port), "SERVER_PROTOCOL": head.version,
        "REMOTE_ADDR": str(peer[0]), "REMOTE_PORT": str(peer[1]),
        "CONTENT_LENGTH": str(length) if length or head.length or head.chunked else "",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.input": body if not too_large else io.BytesIO(),      # never read: the app answers 413
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "wsgi.input_terminated": True,
    }
    for name, value in head.headers:
        key = name.upper().replace("-", "_")
        if "_" in name or key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue                                # "_" names could pose as "-" ones; the length is set above
        key = key if key == "CONTENT_TYPE" else "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def run_app(app, environ: dict) -> tuple[str, list[tuple[str, str]], bytes]:
    """In a pool thread: the app's status, headers and whole body."""
    response: dict = {}
    chunks: list[bytes] = []

    def start_response(status, headers, exc_info=None):
        if exc_info and response:
            raise exc_info[1].with_traceback(exc_info[2])
        response["status"], response["headers"] = status, list(headers)
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(chunk for chunk in result if chunk)
    finally:
        if hasattr(result, "close"):
            result.close()
    return response["status"], response["headers"], b"".join(chunks)
