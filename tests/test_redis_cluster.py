"""Queues sharded over a real Redis Cluster: 3 masters and 3 replicas on loopback, started once.

Two models whose queues live on different masters answer right, and every key of a model lives on its
master; the dead-letter script runs on a cluster; kill -9 of the master holding a queue under 4 clients
of steady load: its replica is promoted and both tiers carry on without a restart, measured with and
without ENQUEUE_REPLICAS; the enqueue's cost of ENQUEUE_REPLICAS; throughput of several models on 1
shard against 3. The figures go to tests/artifacts/cluster_failover.json and cluster_scaling.json.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import threading
import time
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from test_many_models import publish_version

from conftest import ARTIFACTS, DATA, ServerThread, make_config, wait_for
from image_gateway import protocol
from image_gateway.redis_server import RedisCluster

LITE = "efficientnet_lite0"
# Top-1 of the test photos (tests/test_model.py's golden answers; the cat is any of ImageNet's three cats).
PHOTOS = {"cat.jpg": {"Egyptian_cat", "tabby", "tiger_cat"}, "coffee.jpg": {"espresso"},
          "rocket.jpg": {"missile"}, "motorcycle.jpg": {"moped"}}
REQUEST_TIMEOUT_S = 10.0
FAILOVER_FIGURES: dict = {}


@pytest.fixture(scope="module")
def cluster():
    with RedisCluster(masters=3, replicas=1, node_timeout_ms=2000) as cluster:
        yield cluster


def queue_key(name: str) -> str:
    return protocol.Keys("gw", name, "1").queue


def names_on(cluster: RedisCluster, masters: list[str], prefix: str) -> list[str]:
    """One model name per entry of `masters` whose queue's slot that master serves (in order)."""
    found = []
    for master in masters:
        found.append(next(f"{prefix}{i}" for i in range(500) if f"{prefix}{i}" not in found
                          and cluster.master_of(queue_key(f"{prefix}{i}")) == master))
    return found


def master_addresses(cluster: RedisCluster) -> list[str]:
    return sorted(node["address"] for node in cluster.nodes() if "master" in node["flags"] and node["slots"])


@pytest.fixture(scope="module")
def served(cluster, tmp_path_factory):
    """Workers (a ModelHost in this process, REDIS_CLUSTER=1) for efficientnet_lite0 and a toy repository
    model whose queue is on another master."""
    from image_gateway.worker.host import start_workers
    repository = tmp_path_factory.mktemp("repository")
    lite_master = cluster.master_of(queue_key(LITE))
    other = next(address for address in master_addresses(cluster) if address != lite_master)
    toy = names_on(cluster, [other], "toy")[0]
    publish_version(repository, toy, 1, 1)                  # always answers "beta"
    config = make_config(cluster.url, redis_cluster=1, model=LITE, models=LITE, model_repository=str(repository),
                         repository_poll_s=0.5, catalog_refresh_s=0.5, request_timeout=REQUEST_TIMEOUT_S)
    host = start_workers(config)
    yield SimpleNamespace(config=config, toy=toy, host=host)
    host.stop(5)


def post(url: str, model: str, photo: str = "cat.jpg", session=requests) -> requests.Response:
    image = (DATA / photo).read_bytes()
    return session.post(f"{url}/v1/models/{model}/predict", files={"image": (photo, image)}, timeout=30)


def serving(url: str, *names: str) -> bool:
    listing = requests.get(f"{url}/v1/models", timeout=10).json()["models"]
    ready = {model["name"] for model in listing if model["versions"][0]["state"] == "READY"}
    return set(names) <= ready


# ------------------------------------------------------------------------- answers, shards, keys
def test_two_models_on_two_masters_answer_right_and_keep_their_keys_on_their_shard(cluster, served):
    from image_gateway.web.app import create_app
    web = ServerThread(create_app(served.config), served.config)
    try:
        wait_for(lambda: serving(web.url, LITE, served.toy), 120, 0.2, "both models READY")
        for photo, labels in PHOTOS.items():
            body = post(web.url, LITE, photo).json()
            assert body["predictions"][0]["label"] in labels, (photo, body)
        toy = post(web.url, served.toy).json()
        assert (toy["model"], toy["predictions"][0]["label"]) == (served.toy, "beta")

        # CLUSTER KEYSLOT of each queue, then the master whose CLUSTER NODES slot ranges hold it.
        slots = {name: int(cluster.ask("CLUSTER", "KEYSLOT", queue_key(name))) for name in (LITE, served.toy)}
        masters = {name: cluster.master_of(queue_key(name)) for name in (LITE, served.toy)}
        assert slots[LITE] != slots[served.toy] and masters[LITE] != masters[served.toy]
        for name, master in masters.items():            # every key of a model on its master, none elsewhere
            elsewhere = [(node, key) for node in master_addresses(cluster) if node != master
                         for key in keys_on(node) if f"{{{name}:1}}" in key]
            assert elsewhere == [] and any(f"{{{name}:1}}" in key for key in keys_on(master))

        status = requests.get(f"{web.url}/status", timeout=10).json()
        assert (status["model"], status["shard"]) == (LITE, masters[LITE])
        text = requests.get(f"{web.url}/metrics", timeout=10).text
        shards = {sample.labels["model"]: sample.labels["shard"] for family in text_string_to_metric_families(text)
                  if family.name == "gateway_queue_shard" for sample in family.samples}
        assert shards == masters
    finally:
        web.stop()


def keys_on(address: str) -> list[str]:
    host, port = address.split(":")
    client = redis.Redis(host=host, port=int(port))
    try:
        return [key.decode() for key in client.scan_iter("gw:*", count=1000)]
    finally:
        client.close()


def test_a_dead_workers_jobs_are_requeued_or_dead_lettered_on_a_cluster(cluster):
    """REQUEUE_DEAD writes result keys it builds from a prefix (not declared in KEYS, same slot): Redis 7
    runs it on a cluster node, and the client gets its dead-letter answer."""
    client = protocol.connect(cluster.url, 5.0, cluster=True)
    queue = protocol.JobQueue(client, "dead-letter-check")
    jobs = [protocol.Job(id=protocol.new_job_id(), model=queue.model, deadline=time.time() + 60,
                         array=np.zeros((8, 8, 3), np.uint8)) for _ in range(3)]
    for job in jobs:
        assert queue.enqueue(job, 10)
    queue.heartbeat("doomed", {}, 0.2)
    assert len(queue.claim("doomed", 2)) == 2
    time.sleep(0.3)
    assert queue.requeue_dead(0.2, 1, 60) == (0, 2, 0)     # one claim allowed: both dead-lettered
    for job in jobs[:2]:
        answer = queue.wait_result(job.id, 2.0)
        assert answer and answer.error["code"] == "INFERENCE_FAILED"
    queue.heartbeat("doomed-too", {}, 0.2)
    assert len(queue.claim("doomed-too", 2)) == 1
    time.sleep(0.3)
    assert queue.requeue_dead(0.2, 3, 60) == (1, 0, 0)     # back to the retry list
    assert protocol.Job.decode(*queue.claim_jobs("heir", 2)[0]).attempts == 1
    client.delete(*[key for key in (queue.keys.queue, queue.keys.retry, queue.keys.dead_letter,
                                    queue.keys.processing("heir"), queue.keys.workers,
                                    *(queue.keys.pixels(job.id) for job in jobs))])
    client.close()


# ----------------------------------------------------------------------------------- failover
class Load:
    """Clients posting the cat in a closed loop to one model (`pause_s` between requests); every answer
    recorded with its start and end times, status, error code and Retry-After."""

    def __init__(self, url: str, model: str, clients: int = 4, pause_s: float = 0.0):
        self.url, self.model, self.pause_s = url, model, pause_s
        self.records: list[tuple[float, float, int, str | None, str | None]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        [thread.start() for thread in self.threads]

    def _client(self) -> None:
        with requests.Session() as session:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    response = post(self.url, self.model, session=session)
                    code = None if response.ok else response.json()["error"]["code"]
                    self.records.append((started, time.monotonic(), response.status_code, code,
                                         response.headers.get("Retry-After")))
                except requests.RequestException as exc:
                    self.records.append((started, time.monotonic(), 0, type(exc).__name__, None))
                self.stopping.wait(max(self.pause_s, 0.1 if self.records[-1][2] == 503 else 0.0))

    def first_success_after(self, moment: float) -> float | None:
        return min((end for start, end, status, *_ in self.records if start >= moment and status == 200), default=None)

    def stop(self) -> None:
        self.stopping.set()
        [thread.join(40) for thread in self.threads]


@pytest.mark.parametrize("replicas", [0, 1], ids=["ENQUEUE_REPLICAS=0", "ENQUEUE_REPLICAS=1"])
def test_kill_9_of_a_queue_master_under_load_fails_over_by_itself(replicas, cluster, served):
    from image_gateway.web.app import create_app
    config = dataclasses.replace(served.config, enqueue_replicas=replicas)
    web = ServerThread(create_app(config), config)
    wait_for(lambda: serving(web.url, LITE), 60, 0.2, "the model READY")
    load = Load(web.url, LITE)                              # the steady load: 4 clients
    newcomer = Load(web.url, LITE, clients=1, pause_s=0.25)  # new requests all through the failover window
    bystander = Load(web.url, served.toy, clients=1, pause_s=0.25)   # the model on a master that stays up
    try:
        time.sleep(3.0)
        victim = cluster.master_of(queue_key(LITE))
        killed = cluster.kill_master_of(queue_key(LITE))
        killed_at = time.monotonic()
        first = wait_for(lambda: load.first_success_after(killed_at), 40, 0.05, "a success after the kill")
        time.sleep(10.5)
    finally:
        [clients.stop() for clients in (load, newcomer, bystander)]
    try:
        figures = failover_figures(load.records, killed_at, first)
        figures["newcomer"] = failover_figures(newcomer.records, killed_at, newcomer.first_success_after(killed_at))
        figures["other_model"] = failover_figures(bystander.records, killed_at, first)
        promoted = cluster.master_of(queue_key(LITE))
        wait_for(lambda: requests.get(f"{web.url}/status", timeout=10).json().get("shard") == promoted, 20, 0.2,
                 "/status to name the promoted master")
    finally:
        web.stop()
        cluster.restart(killed)                             # back as the replica of the promoted master
    FAILOVER_FIGURES[f"enqueue_replicas_{replicas}"] = {**figures, "killed_master": victim, "promoted": promoted}
    write_artifact("cluster_failover.json", FAILOVER_FIGURES)

    assert promoted != victim
    assert figures["seconds_to_first_success"] < 20
    for clients in (figures, figures["newcomer"], figures["other_model"]):
        assert clients["success_rate_10s_after_recovery"] == 1.0, figures
        assert clients["max_latency_s"] <= REQUEST_TIMEOUT_S + 1, figures
        assert set(clients["statuses"]) <= {"200", "503 QUEUE_UNAVAILABLE", "504 TIMEOUT"}, figures
        assert clients["refused_without_retry_after"] == 0, figures


def failover_figures(records: list, killed_at: float, first_success: float) -> dict:
    after = [record for record in records if first_success <= record[0] < first_success + 10]
    window = [record for record in records if record[1] >= killed_at and record[0] < first_success]
    statuses: dict[str, int] = {}
    for _, _, status, code, _ in records:
        key = f"{status} {code}" if code else str(status)
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "seconds_to_first_success": round(first_success - killed_at, 2),
        "success_rate_10s_after_recovery": sum(r[2] == 200 for r in after) / max(1, len(after)),
        "requests_10s_after_recovery": len(after),
        "requests_in_failover_window": len(window),
        "window_statuses": sorted({f"{r[2]} {r[3] or ''}".strip() for r in window}),
        "accepted_but_unanswered": sum(r[2] == 504 or r[2] == 0 for r in records),
        "refused_503": sum(r[2] == 503 for r in records),
        "refused_without_retry_after": sum(r[2] == 503 and not r[4] for r in records),
        "max_latency_s": round(max(end - start for start, end, *_ in records), 2),
        "requests": len(records),
        "statuses": statuses,
    }


def write_artifact(name: str, figures: dict) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / name).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def test_enqueue_replicas_costs_a_replica_round_trip(cluster):
    """p50 of one enqueue (a 224x224x3 uint8 job) with and without WAIT 1; with more replicas than exist
    the WAIT gives up after REPLICA_WAIT_MS and the job is counted `unreplicated`, not refused."""
    client = protocol.connect(cluster.url, 5.0, cluster=True)
    queue = protocol.JobQueue(client, "enqueue-cost")
    array = np.random.default_rng(0).integers(0, 255, (224, 224, 3), np.uint8)
    def job() -> protocol.Job:
        return protocol.Job(id=protocol.new_job_id(), model=queue.model, deadline=time.time() + 60, array=array)

    def settled() -> bool:
        """Ten enqueues in a row acknowledged by the replica (else forget the count and try again)."""
        for _ in range(10):
            queue.enqueue(job(), 10_000, replicas=1)
        return not queue.stats().get("unreplicated") or bool(client.delete(queue.keys.stats)) and False

    # A new cluster saves its config (fsync) as it settles: WAITs time out for about a second.
    wait_for(settled, 20, 0.1, "a replica that acknowledges at once")
    timings: dict[int, list[float]] = {0: [], 1: []}
    for i in range(400):
        replicas = i % 2
        started = time.perf_counter()
        assert queue.enqueue(job(), 10_000, replicas=replicas)
        timings[replicas].append(time.perf_counter() - started)
    shortfalls = queue.stats().get("unreplicated", 0)      # a replica stalled > 100 ms (a busy machine)
    started = time.perf_counter()
    assert queue.enqueue(job(), 10_000, replicas=2)         # 2 replicas asked, 1 exists: counted, accepted
    short_s = time.perf_counter() - started
    assert queue.stats()["unreplicated"] == shortfalls + 1 and 0.09 < short_s < 1.0
    assert shortfalls <= 10
    client.delete(queue.keys.queue, queue.keys.stats)
    client.close()
    p50 = {replicas: round(float(np.median(values)) * 1000, 3) for replicas, values in timings.items()}
    FAILOVER_FIGURES["enqueue_p50_ms"] = {"enqueue_replicas_0": p50[0], "enqueue_replicas_1": p50[1],
                                         "cost_ms": round(p50[1] - p50[0], 3), "unreplicated_of_200": shortfalls}
    write_artifact("cluster_failover.json", FAILOVER_FIGURES)


# ------------------------------------------------------------------------------------ scaling
def drive(url: str, model: str, seconds: float, threads: int) -> int:
    """In a child process: `threads` clients that each enqueue a 224x224x3 job, claim and publish like a
    worker with no model (batches of up to 8), and wait for their own result. Jobs answered."""
    client = protocol.connect(url, 5.0, cluster=True)
    queue = protocol.JobQueue(client, model)
    array = np.zeros((224, 224, 3), np.uint8)
    answered = [0] * threads
    until = time.monotonic() + seconds

    def run(index: int) -> None:
        worker = f"fake-{index}"
        while time.monotonic() < until:
            job = protocol.Job(id=protocol.new_job_id(), model=model, deadline=time.time() + 30, array=array)
            queue.enqueue(job, 10_000)
            claimed = [protocol.peek_id(raw) for raw in queue.claim(worker, 8)]
            queue.publish([protocol.Result.ok(job_id, predictions=[]) for job_id in claimed], 30,
                          ack=(worker, len(claimed)))
            answered[index] += queue.wait_result(job.id, 5.0) is not None

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    [thread.start() for thread in pool]
    [thread.join() for thread in pool]
    return sum(answered)


def measure(cluster: RedisCluster, models: list[str], seconds: float = 4.0) -> dict:
    """Jobs/s of one driver process per model, and the CPU each master used meanwhile."""
    masters = {address: psutil.Process(cluster.server_at(address).process.pid) for address in master_addresses(cluster)}
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(models)) as pool:
        pool.starmap(drive, [(cluster.url, model, 0.2, 1) for model in models])       # spawned and imported
        before = {address: sum(process.cpu_times()[:2]) for address, process in masters.items()}
        machine_before, started = psutil.cpu_times(), time.monotonic()
        answered = pool.starmap(drive, [(cluster.url, model, seconds, 2) for model in models])
        elapsed, machine = time.monotonic() - started, psutil.cpu_times()
    idle = (machine.idle - machine_before.idle) / (sum(machine) - sum(machine_before))
    return {"models": models, "jobs_per_s": round(sum(answered) / elapsed, 1), "seconds": round(elapsed, 2),
            "machine_cpu_busy": round(1 - idle, 2),
            "master_cpu_cores": {address: round((sum(process.cpu_times()[:2]) - before[address]) / elapsed, 2)
                                 for address, process in masters.items()}}


def test_throughput_of_three_models_on_one_shard_and_on_three(cluster):
    masters = master_addresses(cluster)
    one_shard = names_on(cluster, [masters[0]] * 3, "bench")
    three_shards = names_on(cluster, masters, "spread")
    figures = {"one_shard": measure(cluster, one_shard), "three_shards": measure(cluster, three_shards),
               "cpu_cores": len(psutil.Process().cpu_affinity())}
    figures["ratio"] = round(figures["three_shards"]["jobs_per_s"] / figures["one_shard"]["jobs_per_s"], 2)
    write_artifact("cluster_scaling.json", figures)
    assert figures["one_shard"]["jobs_per_s"] > 0 and figures["three_shards"]["jobs_per_s"] > 0
