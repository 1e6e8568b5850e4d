"""Redis memory as the gateway needs it: used against the limit (/status, /metrics), and a start-up check
that the eviction policy cannot drop the gateway's keys.

Queues, workers' processing lists, tasks and results must never be evicted: an evicted queue loses
accepted jobs, an evicted result leaves its handler to time out. With `maxmemory-policy noeviction` a
full Redis refuses writes instead, which the web tier answers with a coded 503. The result cache bounds
itself (CACHE_MAX_MB, scripts.CACHE_PUT), so the gateway needs no eviction at all.
"""
from __future__ import annotations

import logging

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

log = logging.getLogger("gateway.redis")
EVICTING = ("allkeys-", "volatile-")      # maxmemory-policy prefixes that may drop keys the gateway needs


def _node(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def usage(client: redis.Redis) -> dict[str, dict]:
    """Each master's `{"used_memory", "maxmemory" (0: no limit), "maxmemory_policy"}` from INFO memory,
    by host:port. Raises redis.RedisError (unreachable, or INFO refused by an ACL)."""
    try:
        if isinstance(client, RedisCluster):
            replies = client.info("memory", target_nodes=RedisCluster.PRIMARIES)
            replies = replies if "used_memory" not in replies else {"cluster": replies}
        else:
            replies = {_node(client): client.info("memory")}
    except RedisClusterException as exc:
        raise redis.ConnectionError(f"redis cluster: {exc}") from exc
    return {node: {"used_memory": int(info.get("used_memory", 0)), "maxmemory": int(info.get("maxmemory", 0)),
                   "maxmemory_policy": str(info.get("maxmemory_policy", ""))} for node, info in replies.items()}


def policies(client: redis.Redis) -> dict[str, str]:
    """maxmemory-policy of each master: INFO memory, else CONFIG GET; {} when both are refused or
    renamed (a managed Redis) or Redis is unreachable (logged at debug: nothing to check then)."""
    try:
        found = {node: info["maxmemory_policy"] for node, info in usage(client).items()}
        if all(found.values()):
            return found
    except redis.ResponseError as exc:      # refused (NOPERM) or renamed away: CONFIG GET may still answer
        log.debug("INFO memory refused (%s); trying CONFIG GET maxmemory-policy", exc)
    except redis.RedisError as exc:
        log.debug("maxmemory-policy not checked: redis unreachable (%s)", exc)
        return {}
    try:
        reply = client.config_get("maxmemory-policy")
    except (redis.RedisError, RedisClusterException) as exc:
        log.debug("maxmemory-policy not checked: CONFIG GET failed (%s)", exc)
        return {}
    if "maxmemory-policy" in reply:
        return {"redis": str(reply["maxmemory-policy"])}
    return {str(node): str(value.get("maxmemory-policy", ""))
            for node, value in reply.items() if isinstance(value, dict)}


def warn_if_evicting(client: redis.Redis) -> dict[str, str]:
    """Log a WARNING for each Redis whose maxmemory-policy may evict the gateway's keys; those policies."""
    evicting = {node: policy for node, policy in policies(client).items() if policy.startswith(EVICTING)}
    for node, policy in evicting.items():
        log.warning("redis %s has maxmemory-policy %s: when it reaches maxmemory it may evict queued jobs, "
                    "claimed jobs, tasks and results, and their clients would wait in vain; set "
                    "maxmemory-policy noeviction (a full Redis then refuses new work with 503, and the result "
                    "cache stays within CACHE_MAX_MB by itself)", node, policy)
    return evicting
