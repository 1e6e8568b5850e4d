"""What every pipeline runner shares: a step's output (or the request fails naming the step), a model's
name and version for the answer, and a model's input from an image already decoded."""
from __future__ import annotations

import numpy as np
from PIL import Image

from image_gateway import errors, imaging, protocol
from image_gateway.errors import GatewayError
from image_gateway.web.jobs import Call, wait
from image_gateway.web.routing import Served


def step_output(call: Call, served: Served, job: protocol.Job, step: str) -> dict:
    """A step's answer fields, or the request fails naming the step."""
    result = wait(call, served, job, step)
    if not result.success:
        raise GatewayError(errors.PIPELINE_STEP_FAILED, f"{step} failed: {result.error['code']}: "
                           f"{result.error['message']}")
    return result.output


def describe(served: Served) -> dict:
    return {"model": served.name, "version": served.version}


def image_input(call: Call, image: Image.Image, spec) -> tuple[np.ndarray, dict]:
    """A classifier's square, or a detector's working image with what maps its boxes back, from a decoded
    image (jobs.model_input's work after the decode)."""
    if spec.kind == "detector":
        return imaging.working_image(image, call.config.detect_max_side)
    return imaging.fit_square(image, spec), {}


def decoded(call: Call, upload) -> Image.Image:
    """The upload's image: decoded now, or already (a frame of a frames pipeline carries its `image`)."""
    image = getattr(upload, "image", None)
    if image is not None:
        return image
    return imaging.decode_image(upload.data, max_pixels=call.config.max_image_pixels, deadline=call.deadline)
