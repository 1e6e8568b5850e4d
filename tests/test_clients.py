"""Clients (CLIENTS): per-client routes to model versions, canary splits, quotas, task ownership, hot reload.

Real redis-server, real worker threads, real HTTP through the embedded front. The repository model `toy`
is a tiny ONNX classifier (the mean of each channel) whose labels name its version ("v1-red", "v2-red"),
so every answer shows which version produced it.
"""
from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
from model_files import channel_mean_classifier, version
from PIL import Image
from test_many_models import Gateway, repository_config

from conftest import ServerThread, wait_for
from image_gateway import keys as keys_cli
from image_gateway.clients import ClientRegistry, Route, assign, key_hash, read_book
from image_gateway.protocol.ratelimit import RateLimiter
from image_gateway.web.app import create_app

POLL_S = 0.5
KEYS = {name: f"key-of-{name}-{'x' * 20}" for name in ("alpha", "beta", "canary", "open", "limited")}


def png(colour: tuple[int, int, int], size: int = 20) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


RED = png((220, 30, 30))


def clients_document(alpha_version: str = "1") -> dict:
    def client(name: str, **extra) -> dict:
        return {"name": name, "keys_sha256": [key_hash(KEYS[name])], **extra}
    return {"clients": [
        client("alpha", routes={"scene": {"model": "toy", "version": alpha_version}}, max_task_images=3),
        client("beta", routes={"scene": {"model": "toy", "version": "2"}, "all": {"pipeline": "toys"}}),
        client("canary", routes={"scene": {"model": "toy", "split": {"1": 90, "2": 10}}}),
        client("open", routes={"scene": {"model": "toy"}}, models=["toy", "toys"]),
        client("limited", routes={"scene": {"model": "toy", "version": "1"}}, rate=2, burst=5),
    ]}


def write_clients(path, document: dict) -> None:
    """Replace the file whole (a rename), as python -m image_gateway.keys does."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(document, file)
    os.replace(temporary, path)


@pytest.fixture(scope="module")
def setup(redis_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clients")
    repository = folder / "repository"
    model = channel_mean_classifier(folder / "m.onnx", "NHWC", 16)
    for number in (1, 2):
        version(repository, "toy", number, {"model.onnx": model, "labels.txt": f"v{number}-red\nv{number}-green\n"
                                            f"v{number}-blue\n", "config.json": {"std": 10, "output": "logits"}})
    pipelines = folder / "pipelines.json"
    pipelines.write_text(json.dumps({"pipelines": [{"name": "toys", "type": "fan_out", "models": ["toy"]}]}))
    clients = folder / "clients.json"
    write_clients(clients, clients_document())
    config = repository_config(redis_server.url, repository, pipelines=str(pipelines), clients=str(clients),
                               key_prefix="clients", repository_poll_s=POLL_S)
    gateway = Gateway(config)
    try:
        wait_for(lambda: requests.get(gateway.url + "/v2/health/ready", timeout=5).status_code == 200, 60, 0.2,
                 message="toy v1 and v2 to be ready")
        gateway.clients, gateway.config = clients, config
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def gateway(setup):
    """The module's gateway with the clients file as first written."""
    write_clients(setup.clients, clients_document())
    time.sleep(POLL_S * 1.5)
    me = requests.get(setup.url + "/v1/clients/me", headers={"X-API-Key": KEYS["alpha"]}, timeout=10).json()
    assert me["routes"]["scene"] == {"model": "toy", "version": "1"}      # read again: the file is in force
    return setup


def post(gateway, path: str, client: str | None, data: bytes = RED, **fields) -> requests.Response:
    headers = {"X-API-Key": KEYS[client]} if client else {}
    return requests.post(gateway.url + path, files={"image": ("x.png", data)}, data=fields, headers=headers,
                         timeout=30)


def served_version(response: requests.Response) -> str:
    body = response.json()
    assert response.status_code == 200, body
    assert body["predictions"][0]["label"].startswith(f"v{body['version']}-"), body     # it came from that version
    return body["version"]


# ---------------------------------------------------------------------------- routes and hot reload
def test_two_clients_get_their_own_version_of_one_type(gateway):
    alpha, beta = post(gateway, "/v1/recognize/scene", "alpha"), post(gateway, "/v1/recognize/scene", "beta")
    assert served_version(alpha) == "1" and served_version(beta) == "2"
    assert {k: alpha.json()[k] for k in ("type", "client", "model")} == {"type": "scene", "client": "alpha",
                                                                         "model": "toy"}
    assert beta.json()["client"] == "beta"
    pipeline = post(gateway, "/v1/recognize/all", "beta")
    assert pipeline.status_code == 200 and pipeline.json()["pipeline"] == "toys", pipeline.json()
    unknown = post(gateway, "/v1/recognize/plates", "alpha")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "TYPE_NOT_FOUND"
    assert "scene" in unknown.json()["error"]["message"]


def test_a_clients_file_edit_moves_a_client_under_load_with_no_failed_request(gateway):
    stop = threading.Event()
    answers: list[tuple[float, str, int, str | None]] = []     # (started, client, status, version)

    def load(client: str) -> None:
        session = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            response = session.post(gateway.url + "/v1/recognize/scene", files={"image": ("x.png", RED)},
                                    headers={"X-API-Key": KEYS[client]}, timeout=30)
            answers.append((started, client, response.status_code,
                            served_version(response) if response.status_code == 200 else None))

    with ThreadPoolExecutor(4) as pool:
        for client in ("alpha", "alpha", "beta", "beta"):
            pool.submit(load, client)
        time.sleep(1.0)
        edited = time.monotonic()
        write_clients(gateway.clients, clients_document(alpha_version="2"))
        time.sleep(POLL_S + 1.5)
        stop.set()
    assert answers and all(status == 200 for _, _, status, _ in answers), [a for a in answers if a[2] != 200][:3]
    alpha_before = {v for started, client, _, v in answers if client == "alpha" and started < edited}
    alpha_after = {v for started, client, _, v in answers if client == "alpha" and started > edited + POLL_S}
    assert alpha_before == {"1"} and alpha_after == {"2"}, (alpha_before, alpha_after)
    assert {v for _, client, _, v in answers if client == "beta"} == {"2"}
    print(f"\n{len(answers)} requests under load, none failed; alpha on v2 within REPOSITORY_POLL_S={POLL_S}")


def test_a_bad_edit_keeps_the_clients_in_force_and_a_bad_file_stops_the_start(gateway, tmp_path):
    gateway.clients.write_text('{"clients": [{"name": "alpha", "routes": {"scene": {"model": "toy", "split": 7}}}]}')
    time.sleep(POLL_S * 1.5)
    assert served_version(post(gateway, "/v1/recognize/scene", "alpha")) == "1"      # the previous file's route
    bad = tmp_path / "bad.json"
    bad.write_text('{"clients": [{"name": "x", "keys": []}]}')
    with pytest.raises(ValueError, match=r"bad.json: client 'x': unknown field\(s\) keys"):
        ClientRegistry(str(bad), None, 1.0)
    with pytest.raises(ValueError, match="CLIENTS file"):
        ClientRegistry(str(tmp_path / "missing.json"), None, 1.0)


def test_toml_mirrors_json_and_the_keys_command_adds_and_revokes(tmp_path, capsys):
    path = tmp_path / "clients.toml"
    path.write_text('[[clients]]\nname = "bank"\nkeys_sha256 = []\nrate = 20\nburst = 20\n'
                    '[clients.routes]\nscene = {model = "toy", split = {"1" = 90, "2" = 10}}\n')
    assert keys_cli.main(["--file", str(path), "new", "bank"]) == 0
    first = capsys.readouterr().out.strip()
    assert keys_cli.main(["--file", str(path), "new", "bank"]) == 0      # rotation: add the new key ...
    second = capsys.readouterr().out.strip()
    book = read_book(str(path), "admin-key")
    assert book.by_key(first).name == book.by_key(second).name == "bank" and book.by_key("admin-key").name == "default"
    assert book.clients["bank"].routes["scene"] == Route("toy", split=(("1", 90), ("2", 10)))
    assert keys_cli.main(["--file", str(path), "revoke", "bank", key_hash(first)]) == 0   # ... then drop the old
    book = read_book(str(path), None)
    assert book.by_key(first) is None and book.by_key(second).name == "bank" and book.by_key("") is None
    assert keys_cli.main(["--file", str(tmp_path / "new.json"), "new", "shop"]) == 0     # file and client created
    assert read_book(str(tmp_path / "new.json"), None).by_key(capsys.readouterr().out.strip()).name == "shop"


# ---------------------------------------------------------------------------------------- canary
def test_a_90_10_canary_is_sticky_per_image_and_lands_near_10_percent(gateway):
    route = Route("toy", split=(("1", 90), ("2", 10)))
    images = [f"image {index}".encode() * 50 for index in range(2000)]
    chosen = [route.version_for(data) for data in images]
    share = chosen.count("2") / len(chosen)
    assert 0.07 <= share <= 0.13, share
    assert [route.version_for(data) for data in images] == chosen                  # the same image, the same version
    assert assign("toy", (("1", 0), ("2", 5)), b"any") == "2"
    photos = [png((index * 20, 255 - index * 20, 90)) for index in range(12)]
    for photo in photos:
        expected = route.version_for(photo)
        answers = {served_version(post(gateway, "/v1/recognize/scene", "canary", photo)) for _ in range(2)}
        assert answers == {expected}
    print(f"\ncanary share over 2,000 images: {share:.1%}")


# ----------------------------------------------------------------------------------------- quotas
def test_the_gcra_script_allows_rate_and_burst_and_names_the_wait(redis_server):
    redis_client = redis.Redis.from_url(redis_server.url)      # not flushed: the module's gateway keeps its keys
    redis_client.delete(*[f"gcra-test:{{client:{name}}}:rate" for name in ("c", "other", "steady")])
    limiter = RateLimiter(redis_client, "gcra-test")
    decisions = [limiter.take("c", 20, 20) for _ in range(21)]
    assert all(d.allowed for d in decisions[:20]) and not decisions[20].allowed
    assert 0 < decisions[20].retry_after_s <= 0.06 and decisions[20].remaining == 0
    time.sleep(0.12)
    later = [limiter.take("c", 20, 20).allowed for _ in range(4)]
    assert later[:2] == [True, True] and later[3] is False
    assert limiter.take("other", 20, 20).allowed                          # one limit per client
    started, allowed = time.monotonic(), 0
    while time.monotonic() - started < 1.0:                                # ~100/s offered for one second
        allowed += limiter.take("steady", 20, 20).allowed
        time.sleep(0.01)
    assert 36 <= allowed <= 44, allowed                                    # the burst of 20, then 20/s
    assert redis_client.pttl("gcra-test:{client:steady}:rate") <= 1001


def test_two_web_servers_share_one_limit_and_answer_429_with_retry_after(gateway):
    second = ServerThread(create_app(gateway.config), gateway.config)
    try:
        servers = [gateway.url, second.url]

        def send(index: int) -> requests.Response:
            return requests.post(servers[index % 2] + "/v1/recognize/nosuch", files={"image": ("x.png", RED)},
                                 headers={"X-API-Key": KEYS["limited"]}, timeout=30)

        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(send, range(20)))
        elapsed = time.monotonic() - started
        passed = [r for r in answers if r.status_code == 404]        # past the quota: its type is unknown
        limited = [r for r in answers if r.status_code == 429]
        assert len(passed) + len(limited) == 20
        assert 5 <= len(passed) <= 5 + int(2 * elapsed) + 1, (len(passed), elapsed)   # burst 5 + 2/s, both servers
        assert all(r.json()["error"]["code"] == "RATE_LIMITED" and int(r.headers["Retry-After"]) >= 1
                   for r in limited)
        me = requests.get(second.url + "/v1/clients/me", headers={"X-API-Key": KEYS["limited"]}, timeout=10).json()
        assert me["client"] == "limited" and me["rate"] == 2 and me["burst"] == 5 and me["quota"]["remaining"] <= 1
        metrics = requests.get(gateway.url + "/metrics", headers={"X-API-Key": KEYS["alpha"]}, timeout=10).text
        assert 'gateway_rate_limited_total{client="limited"}' in metrics
    finally:
        second.stop()


def test_max_task_images_caps_a_clients_tasks(gateway):
    files = [("image", (f"{i}.png", RED)) for i in range(4)]
    refused = requests.post(gateway.url + "/v1/tasks", files=files, data={"type": "scene"},
                            headers={"X-API-Key": KEYS["alpha"]}, timeout=30)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "TASK_TOO_LARGE"
    assert "alpha" in refused.json()["error"]["message"]


# ------------------------------------------------------------------------- ownership and permissions
def test_a_task_is_visible_and_cancellable_only_by_its_client(gateway):
    created = requests.post(gateway.url + "/v1/tasks", files=[("image", ("a.png", RED)), ("image", ("b.png", RED))],
                            data={"type": "scene"}, headers={"X-API-Key": KEYS["alpha"]}, timeout=30)
    assert created.status_code == 202, created.json()
    url = gateway.url + created.json()["status_url"]
    for method in (requests.get, requests.delete):
        other = method(url, headers={"X-API-Key": KEYS["beta"]}, timeout=10)
        assert other.status_code == 404 and other.json()["error"]["code"] == "TASK_NOT_FOUND"
    done = wait_for(lambda: (r := requests.get(url, headers={"X-API-Key": KEYS["alpha"]}, timeout=10).json())
                    ["state"] == "DONE" and r, 30, 0.1, message="alpha's task to finish")
    assert [(r["type"], r["model"], r["version"]) for r in done["results"]] == [("scene", "toy", "1")] * 2


def test_a_client_without_models_may_use_only_its_routes(gateway):
    for path, fields in (("/predict", {}), ("/predict", {"model": "toy"}), ("/v1/models/toy/predict", {}),
                         ("/v1/models/toy/versions/1/predict", {}), ("/v1/pipelines/toys/predict", {})):
        refused = post(gateway, path, "alpha", **fields)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "MODEL_NOT_ALLOWED", path
    task = requests.post(gateway.url + "/v1/tasks", files=[("image", ("a.png", RED))], data={"model": "toy"},
                         headers={"X-API-Key": KEYS["alpha"]}, timeout=30)
    assert task.status_code == 403
    v2 = requests.post(gateway.url + "/v2/models/toy/infer", json={"inputs": []}, headers={"X-API-Key": KEYS["alpha"]},
                       timeout=10)
    assert v2.status_code == 403 and "may not call" in v2.json()["error"]
    assert served_version(post(gateway, "/predict", "open", version="1")) == "1"      # `models` lists it
    assert post(gateway, "/v1/pipelines/toys/predict", "open").status_code == 200
    me = requests.get(gateway.url + "/v1/clients/me", headers={"X-API-Key": KEYS["canary"]}, timeout=10).json()
    assert me["routes"] == {"scene": {"model": "toy", "split": {"1": 90, "2": 10}}} and me["models"] == []


def test_an_unknown_key_gets_401_on_every_route_that_needs_one(gateway):
    app = create_app(gateway.config)
    public = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/"}
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.rule in public or rule.rule.startswith(("/static", "/docs")):
            continue
        path = rule.rule.replace("<path:", "<").replace("<name>", "toy")
        path = __import__("re").sub(r"<[^>]+>", "1", path)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            for key in ({"X-API-Key": "not-a-key"}, {}):
                answer = requests.request(method, gateway.url + path, headers=key, timeout=10)
                assert answer.status_code == 401, (method, path, answer.status_code)
                checked += 1
    with_body = post(gateway, "/v1/recognize/scene", None)                       # refused by the front, before the body
    assert with_body.status_code == 401 and with_body.json()["error"]["code"] == "UNAUTHORIZED"
    assert checked > 40
    assert requests.get(gateway.url + "/healthz", timeout=10).status_code == 200


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_metrics_and_logs_name_the_client(gateway):
    handler, web_log = Records(), logging.getLogger("gateway.web")
    web_log.addHandler(handler)
    previous = web_log.level
    web_log.setLevel(logging.INFO)          # (setLevel, not the attribute: it clears the logger's cache)
    try:
        assert served_version(post(gateway, "/v1/recognize/scene", "beta")) == "2"
    finally:
        web_log.removeHandler(handler)
        web_log.setLevel(previous)
    lines = [r.__dict__ for r in handler.records if r.getMessage().startswith("predict")]
    assert [(r["client"], r["type"], r["model"], r["version"]) for r in lines] == [("beta", "scene", "toy", "2")]
    text = requests.get(gateway.url + "/metrics", headers={"X-API-Key": KEYS["beta"]}, timeout=10).text
    assert 'gateway_requests_total{client="beta",status="200"}' in text
    assert 'gateway_request_seconds_count{client="beta"}' in text
    assert 'client="not-a-key"' not in text


def test_the_python_client_takes_a_type(gateway, tmp_path, capsys):
    from image_gateway.client import cli
    photo = tmp_path / "red.png"
    photo.write_bytes(RED)
    assert cli.main([str(photo), "--type", "scene", "--api-key", KEYS["beta"], "--url", gateway.url, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (answer["type"], answer["client"], answer["version"]) == ("scene", "beta", "2")
    assert cli.main([str(photo), "--type", "nope", "--api-key", KEYS["beta"], "--url", gateway.url]) == 1
    assert "TYPE_NOT_FOUND" in capsys.readouterr().out
