"""The one-image multipart parser (web/multipart.py, python-multipart) on bodies built here, and through a
real gateway: fields, files, first-wins, malformed bodies as coded 400s."""
from __future__ import annotations

import pytest
import requests

from conftest import DATA, make_config
from image_gateway.web import multipart

BOUNDARY = "b0undary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body(*parts: tuple[str, bytes, str | None], close: bool = True) -> bytes:
    """A multipart body of (name, content, filename or None) parts."""
    out = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def test_files_and_fields_are_told_apart_by_the_filename():
    payload = bytes(range(256)) * 400 + f"\r\n--{BOUNDARY[:-1]}x".encode()     # binary, with a near-boundary
    form = multipart.parse(body(("image", payload, "photo.jpg"), ("top_k", b"3", None), ("model", b"toy", None)),
                           CONTENT_TYPE)
    assert form.files == {"image": payload}
    assert form.fields == {"top_k": "3", "model": "toy"}


def test_the_first_part_of_a_name_wins_and_nameless_parts_are_ignored():
    raw = body(("image", b"first", "a.jpg"), ("image", b"second", "b.jpg"), ("top_k", b"1", None),
               ("top_k", b"2", None))
    form = multipart.parse(raw, CONTENT_TYPE)
    assert form.files["image"] == b"first" and form.fields["top_k"] == "1"
    nameless = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode()
    assert multipart.parse(nameless, CONTENT_TYPE) == multipart.Form()


def test_an_empty_filename_is_still_a_file_and_bad_utf8_is_replaced():
    form = multipart.parse(body(("image", b"\xff\xd8", ""), ("model", b"caf\xe9", None)), CONTENT_TYPE)
    assert form.files == {"image": b"\xff\xd8"} and form.fields == {"model": "caf\ufffd"}


@pytest.mark.parametrize("raw, content_type, reason", [
    (body(("image", b"x", "a.jpg")), "multipart/form-data", "no boundary"),
    (body(("image", b"x", "a.jpg"), close=False), CONTENT_TYPE, "ends before"),
    (b"garbage without any boundary", CONTENT_TYPE, "boundary character"),
    (body(*[(f"f{i}", b"v", None) for i in range(multipart.MAX_PARTS + 1)]), CONTENT_TYPE, "parts"),
])
def test_malformed_bodies_say_what_is_wrong(raw, content_type, reason):
    with pytest.raises(multipart.MalformedForm, match=reason):
        multipart.parse(raw, content_type)


def test_through_the_gateway_fields_apply_and_a_broken_body_is_a_coded_400(redis_url, classifier, gateway_factory):
    """And the two CPU counters bench --serving reads move: decode in the web tier, the model in the worker."""
    web, _ = gateway_factory(make_config(redis_url), classifier)
    cat_jpeg = (DATA / "cat.jpg").read_bytes()
    answer = requests.post(web.url + "/predict", data=body(("image", cat_jpeg, "cat.jpg"), ("top_k", b"2", None)),
                           headers={"Content-Type": CONTENT_TYPE}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 2
    broken = requests.post(web.url + "/predict", data=body(("image", cat_jpeg, "cat.jpg"), close=False),
                           headers={"Content-Type": CONTENT_TYPE}, timeout=30)
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "MISSING_IMAGE" and "does not parse" in broken.json()["error"]["message"]
    assert requests.get(web.url + "/healthz", timeout=10).status_code == 200
    metrics = requests.get(web.url + "/metrics", timeout=10).text
    for name in ("gateway_decode_cpu_seconds_total", 'gateway_model_cpu_seconds_total{model="efficientnet_lite0"'):
        value = next(line.split()[-1] for line in metrics.splitlines() if line.startswith(name))
        assert float(value) > 0, name
