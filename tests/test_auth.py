"""With API_KEY set, every route that shows data or internals needs the key (issue 28, findings 2 and 6);
liveness, readiness and the page's files stay open. Keys are compared whole, in constant time."""
from __future__ import annotations

import requests

from conftest import make_config
from image_gateway.web import auth

KEYED = ["/v1/models", "/v1/models/efficientnet_lite0", "/v1/pipelines", "/v1/tasks/0123456789abcdef", "/status",
         "/metrics", "/openapi.json", "/v2", "/v2/models/efficientnet_lite0", "/v2/models/efficientnet_lite0/ready"]
OPEN = ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/static/app.js", "/docs"]


def test_every_data_route_needs_the_key_and_health_does_not(redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, api_key="k3y", metrics_key="scrape"))
    for path in KEYED:
        refused = requests.get(web.url + path, timeout=10)
        assert refused.status_code == 401, path
        assert requests.get(web.url + path, headers={"X-API-Key": "k3y"}, timeout=10).status_code != 401, path
        assert requests.get(web.url + path, headers={"X-API-Key": "k3y-and-more"}, timeout=10).status_code == 401
    assert requests.get(web.url + "/v1/tasks/0123456789abcdef", timeout=10).json()["error"]["code"] == "UNAUTHORIZED"
    for path in OPEN:
        assert requests.get(web.url + path, timeout=10).status_code != 401, path
    delete = requests.delete(web.url + "/v1/tasks/0123456789abcdef", timeout=10)
    assert delete.status_code == 401


def test_metrics_key_opens_metrics_only(redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, api_key="k3y", metrics_key="scrape"))
    bearer = {"Authorization": "Bearer scrape"}
    assert requests.get(web.url + "/metrics", headers=bearer, timeout=10).status_code == 200
    assert requests.get(web.url + "/metrics", headers={"X-API-Key": "scrape"}, timeout=10).status_code == 200
    assert requests.get(web.url + "/status", headers={"X-API-Key": "scrape"}, timeout=10).status_code == 401
    assert requests.get(web.url + "/metrics", headers={"Authorization": "Bearer k3y!"}, timeout=10).status_code == 401


def test_the_rule_without_a_key_opens_everything_and_never_matches_an_unset_key():
    open_config = make_config("redis://127.0.0.1:1/0")
    assert auth.allowed(open_config, "/status", {})
    keyed = make_config("redis://127.0.0.1:1/0", api_key="k")
    assert not auth.allowed(keyed, "/metrics", {"Authorization": "Bearer "})    # METRICS_KEY unset
    assert not auth.allowed(keyed, "/v1/models", {"X-API-Key": ""})
    assert not auth.key_matches("", None, "")


def test_load_failures_show_no_folders():
    from image_gateway.worker.host import MAX_REASON, public_reason
    reason = public_reason("OSError: [Errno 2] No such file or directory: '/srv/models/flowers/3/model.onnx'")
    assert reason == "OSError: [Errno 2] No such file or directory: 'model.onnx'"
    assert public_reason('config.json: field "layout" must be NHWC or NCHW') == \
        'config.json: field "layout" must be NHWC or NCHW'
    assert len(public_reason("x" * 5000)) == MAX_REASON


def test_the_cluster_launchers_readiness_probe_needs_no_key(redis_url, gateway_factory, classifier):
    """deploy/cluster.py counts live workers from the public /readyz, so a cluster with API_KEY (or CLIENTS)
    becomes ready; it read the keyed /status before and never did."""
    import shutil

    from conftest import wait_for
    from deploy.cluster import Cluster

    web, _ = gateway_factory(make_config(redis_url, api_key="k3y"), classifier)
    probe = Cluster(web=1, workers=0, port=int(web.url.rsplit(":", 1)[1]))
    try:
        assert requests.get(web.url + "/status", timeout=10).status_code == 401
        assert wait_for(probe.live_workers, 30, message="a live worker through /readyz") == 1
    finally:
        shutil.rmtree(probe.run_dir, ignore_errors=True)
