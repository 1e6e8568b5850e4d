"""What every request handler shares, attached once to the app by `init_app`."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

import metrics
import models
import protocol
from settings import Settings


@dataclass(frozen=True)
class Gateway:
    config: Settings
    spec: models.ModelSpec          # the served model's input size, crop and labels (no model loaded)
    queue: protocol.JobQueue
    collector: metrics.QueueCollector


def init_app(app: Flask, config: Settings) -> None:
    spec = models.get_spec(config.model, weights_path=config.model_weights, labels_path=config.model_labels)
    client = protocol.connect(config.redis_url, config.request_timeout)
    queue = protocol.JobQueue(client, spec.name, config.key_prefix)
    app.extensions["gateway"] = Gateway(config, spec, queue, metrics.QueueCollector(queue, config.heartbeat_ttl))
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes


def gateway() -> Gateway:
    return current_app.extensions["gateway"]
