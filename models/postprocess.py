"""Turn a model's output row into the answer's fields (cheap: numpy only, no framework import)."""

from __future__ import annotations

import numpy as np


def top_predictions(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> list[dict]:
    """The k most probable classes of one row, most probable first."""
    top = np.argsort(probabilities)[::-1][:k]
    return [{"label": labels[i], "class_id": int(i), "probability": round(float(probabilities[i]), 6)}
            for i in top]
