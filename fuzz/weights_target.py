"""Fuzz target: the torch-free weights reader (models/torch_weights.py) on mutated legacy weights files.

    python -m fuzz.weights_target -max_total_time=1800 fuzz/corpus/weights
    python -m fuzz.weights_seeds                                # rebuild the seed corpus

Every input must give a state dict ({str: C-contiguous numpy array}, no array larger than the input)
or raise models.errors.WeightsError, within 2 s and 500 MB. Anything else is a finding: another
exception, a crash (a negative stride read before the storage), a memory blow-up (a pickle's memo
index), or a global the reader resolved (the seeds call os.system("true") and builtins.eval).
"""
from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["image_gateway.models.torch_weights", "pickletools"]):
    from image_gateway.models import torch_weights

import numpy as np  # noqa: E402

from fuzz import Finding, run  # noqa: E402
from image_gateway.models.errors import WeightsError  # noqa: E402


def check_one(data: bytes) -> None:
    """One input through the reader; Finding (or any other exception) for a broken promise."""
    try:
        state = torch_weights.read_state_dict_bytes(data, "fuzz input")
    except WeightsError:
        return
    for name, array in state.items():
        if not isinstance(name, str) or not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
            raise Finding(f"the reader returned {type(name).__name__} -> {type(array).__name__}")
        if array.nbytes > len(data):
            raise Finding(f"tensor {name!r} holds {array.nbytes} bytes, more than the {len(data)}-byte input")


def main() -> None:
    run(check_one)


if __name__ == "__main__":
    main()
