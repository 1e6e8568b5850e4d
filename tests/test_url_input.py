"""Images by URL through the gateway, behind the SSRF guard. Traffic stays on loopback: every refused
URL below is refused before any connection, and the allowed ones reach a local HTTP server."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import DATA, make_config

CAT = (DATA / "cat.jpg").read_bytes()


class Photos(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/cat.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(CAT)))
            self.end_headers()
            self.wfile.write(CAT)
        elif self.path == "/to-private":
            self.send_response(302)
            self.send_header("Location", "http://10.0.0.1/cat.jpg")   # refused by the guard, never dialled
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture
def photo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Photos)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def error_code(response: requests.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "2130706433", "0x7f.1", "127.1", "0.0.0.0"])
def test_loopback_in_any_spelling_is_refused_without_an_allowlist(host, redis_url, gateway_factory, photo_server):
    web, _ = gateway_factory(make_config(redis_url))
    port = photo_server.rsplit(":", 1)[1]
    url = f"http://{host}:{port}/cat.jpg"
    answer = requests.post(web.url + "/predict", json={"url": url}, timeout=30)
    assert error_code(answer) == (400, "URL_NOT_ALLOWED")
    form = requests.post(web.url + "/predict", files={"url": (None, url)}, timeout=30)
    assert error_code(form) == (400, "URL_NOT_ALLOWED")


def test_an_allowlisted_local_url_answers_like_the_upload(redis_url, classifier, gateway_factory, photo_server):
    web, _ = gateway_factory(make_config(redis_url, url_allowlist="127.0.0.1"), classifier)
    by_url = requests.post(web.url + "/predict", json={"url": photo_server + "/cat.jpg"}, timeout=60)
    uploaded = requests.post(web.url + "/predict", files={"image": CAT}, timeout=60)
    assert by_url.status_code == 200 and by_url.json()["predictions"] == uploaded.json()["predictions"]
    redirected = requests.post(web.url + "/predict", json={"url": photo_server + "/to-private"}, timeout=30)
    assert error_code(redirected) == (400, "URL_NOT_ALLOWED") and "10.0.0.1" in redirected.json()["error"]["message"]
    missing = requests.post(web.url + "/predict", json={"url": photo_server + "/nope.jpg"}, timeout=30)
    assert error_code(missing) == (400, "URL_FETCH_FAILED")


def test_url_input_can_be_turned_off_and_bad_schemes_are_refused(redis_url, gateway_factory, photo_server):
    web, _ = gateway_factory(make_config(redis_url, url_input=0, url_allowlist="127.0.0.1"))
    off = requests.post(web.url + "/predict", json={"url": photo_server + "/cat.jpg"}, timeout=30)
    assert error_code(off) == (400, "URL_NOT_ALLOWED") and "URL_INPUT" in off.json()["error"]["message"]
    web_on, _ = gateway_factory(make_config(redis_url))
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "http://user:pw@example.test/x.jpg"):
        answer = requests.post(web_on.url + "/predict", json={"url": url}, timeout=30)
        assert error_code(answer) == (400, "URL_NOT_ALLOWED"), url
