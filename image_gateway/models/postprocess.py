"""Turn a model's output row into the answer's fields (cheap: numpy only, no framework import)."""

from __future__ import annotations

import numpy as np

from image_gateway.models.geometry import scale_detections


def top_predictions(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[dict]:
    """The k most probable classes of one row, most probable first."""
    top = np.argsort(probabilities)[::-1][:k]
    return [{"label": labels[i], "class_id": int(i), "probability": round(float(probabilities[i]), 6)}
            for i in top]


def answer_fields(model, jobs: list) -> list[dict]:
    """One model call on a batch of jobs; each job's answer fields (`predictions` or `detections`)."""
    if model.spec.kind == "detector":
        found = model.detect([job.array for job in jobs])
        if len(found) != len(jobs):
            raise RuntimeError(f"detector returned {len(found)} answers for {len(jobs)} inputs")
        return [{"detections": scale_detections(detections, job.params.get("scale", 1.0),
                                                tuple(job.params.get("original_size") or job.array.shape[1::-1]))}
                for job, detections in zip(jobs, found, strict=True)]
    probabilities = model.predict(np.stack([job.array for job in jobs]))
    if len(probabilities) != len(jobs):
        raise RuntimeError(f"model returned {len(probabilities)} rows for {len(jobs)} inputs")
    return [{"predictions": top_predictions(row, model.spec.labels, job.top_k)}
            for job, row in zip(jobs, probabilities, strict=True)]
