"""The torch-free weights reader against hostile files (issue 28, finding 7): no pickle of the file runs
a global it was not built for, whatever opcode names it; strides, offsets, sizes and counts are checked
before any memory is read; the shipped weights still load. The crafted files come from
fuzz/weights_seeds.py (which also writes the fuzz target's seed corpus).
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from fuzz.weights_seeds import (
    MAGIC,
    PROTOCOL,
    SYS_INFO,
    Call,
    Name,
    Storage,
    Tensor,
    assemble,
    dumps,
    hostile_seeds,
    legacy_file,
    plain,
    sample,
)
from image_gateway.models import WeightsError
from image_gateway.models.lite_variants import LITE_VARIANTS, default_weights_path
from image_gateway.models.torch_weights import read_state_dict, read_state_dict_bytes

ROOT = Path(__file__).resolve().parent.parent


class Touch:
    """Pickled by the standard pickler as posix.system("touch <marker>") (os.system's real module)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def with_magic_pickle(pickled: bytes) -> bytes:
    """A file whose first pickle (the magic number's) is `pickled`."""
    return assemble(dumps({}), [], headers=(pickled, dumps(PROTOCOL), dumps(SYS_INFO)))


def test_the_plain_pickle_load_is_gone_from_the_package():
    plain_loads = re.compile(r"\bpickle\.loads?\b|\bcPickle\b|allow_pickle\s*=\s*True")
    found = [str(path) for path in (ROOT / "image_gateway").rglob("*.py") if plain_loads.search(path.read_text())]
    assert found == []


@pytest.mark.parametrize("where", ["state dict", "magic", "protocol", "sys info", "storage keys", "storage"])
def test_an_os_system_global_is_refused_and_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = Call(Name("os", "system"), (f"touch {marker}",))
    header, keys = [MAGIC, PROTOCOL, SYS_INFO], None
    tensors: dict = {"w": plain(np.zeros(2, np.float32), "0")}
    if where == "state dict":
        tensors["evil"] = evil
    elif where == "storage keys":
        keys = ["0", evil]
    elif where == "storage":
        tensors["w"] = Tensor(evil, 0, (1,), (1,))
    else:
        header[["magic", "protocol", "sys info"].index(where)] = evil
    data = legacy_file(tensors, header=tuple(header), keys=keys)
    assert b"os\nsystem\n" in data                      # the call really is in the file
    with pytest.raises(WeightsError, match="disallowed global os.system"):
        read_state_dict_bytes(data)
    assert not marker.exists()


@pytest.mark.parametrize("opcodes", ["STACK_GLOBAL (protocol 4)", "GLOBAL (protocol 0)", "INST", "OBJ", "EXT1"])
def test_every_opcode_that_names_a_global_is_refused(opcodes, tmp_path):
    marker = tmp_path / "pwned"
    command = f"touch {marker}".encode()
    pickled = {"STACK_GLOBAL (protocol 4)": pickle.dumps(Touch(marker), 4),
               "GLOBAL (protocol 0)": pickle.dumps(Touch(marker), 0),
               "INST": b"(S'" + command + b"'\nios\nsystem\n.",
               "OBJ": b"\x80\x02(cos\nsystem\nC" + bytes([len(command)]) + command + b"o.",
               "EXT1": b"\x80\x02\x82\x01."}[opcodes]
    with pytest.raises(WeightsError):
        read_state_dict_bytes(with_magic_pickle(pickled))
    assert not marker.exists()


def test_the_torch_names_are_refused_outside_the_state_dict():
    rebuild = Name("torch._utils", "_rebuild_tensor_v2")
    with pytest.raises(WeightsError, match="disallowed global torch._utils._rebuild_tensor_v2"):
        read_state_dict_bytes(legacy_file({}, header=(rebuild, PROTOCOL, SYS_INFO)))
    with pytest.raises(WeightsError, match="disallowed global torch.FloatStorage"):
        read_state_dict_bytes(legacy_file({}, keys=[Name("torch", "FloatStorage")]))


@pytest.mark.parametrize("build", [b"}X\x01\x00\x00\x00xK\x01sb",                          # a __dict__ state
                                   b"N}X\x08\x00\x00\x00__call__K\x01s\x86b"],            # a slot state
                         ids=["dict-state", "slot-state"])
def test_the_pickle_cannot_change_the_rebuild_stand_in(build):
    """BUILD on what stands in for _rebuild_tensor_v2 (it has neither a __dict__ nor writable slots)."""
    storage = Storage("0", np.zeros(2, np.float32))
    state = dumps({"w": Tensor(storage, 0, (2,), (1,))})
    name = b"ctorch._utils\n_rebuild_tensor_v2\n"
    assert state.count(name) == 1 and read_state_dict_bytes(assemble(state, [storage]))["w"].shape == (2,)
    with pytest.raises(WeightsError):
        read_state_dict_bytes(assemble(state.replace(name, name + build), [storage]))


@pytest.mark.parametrize("name", ["negative-stride", "negative-stride-reversed", "negative-offset", "negative-size",
                                  "outside-storage", "zero-stride-giant", "float-stride", "numel-lie",
                                  "memo-bomb-header", "zip-signature", "eval-as-tensor-storage"])
def test_hostile_shapes_are_a_clear_weights_error(name):
    with pytest.raises(WeightsError) as refused:
        read_state_dict_bytes(hostile_seeds()[name], name)
    assert len(str(refused.value)) < 500


def test_a_negative_stride_is_refused_by_name():
    data = Storage("0", np.arange(8, dtype=np.float32))
    with pytest.raises(WeightsError, match="stride must be a non-negative integer, not -1"):
        read_state_dict_bytes(legacy_file({"w": Tensor(data, 7, (8,), (-1,))}))
    with pytest.raises(WeightsError, match="stride must be a non-negative integer, not -1048576"):
        read_state_dict_bytes(hostile_seeds()["negative-stride"])


def test_a_storage_count_that_disagrees_or_overruns_the_file_is_refused():
    lying = Tensor(Storage("0", np.zeros(4, np.float32), numel=5), 0, (4,), (1,))
    with pytest.raises(WeightsError):
        read_state_dict_bytes(legacy_file({"w": lying}))
    honest = legacy_file({"w": plain(np.zeros(4, np.float32), "0")})
    for cut in (1, 8, 16):
        with pytest.raises(WeightsError, match="truncated"):
            read_state_dict_bytes(honest[:-cut])
    with pytest.raises(WeightsError, match="trailing"):
        read_state_dict_bytes(honest + b"\0")


def test_strided_shared_and_scalar_tensors_come_out_as_torch_meant_them():
    state = read_state_dict_bytes(legacy_file(sample()))
    np.testing.assert_array_equal(state["conv.weight"], np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(state["fc.weight.t"], np.arange(6, dtype=np.float32).reshape(2, 3).T)
    np.testing.assert_array_equal(state["second"], np.arange(4, 10, dtype=np.float32).reshape(3, 2))
    assert state["bn.num_batches_tracked"].shape == () and state["bn.num_batches_tracked"] == 7
    assert state["half.weight"].dtype == np.float16
    assert all(array.flags.c_contiguous and array.flags.writeable for array in state.values())


def test_header_pickles_from_any_standard_protocol_still_read():
    headers = tuple(pickle.dumps(value, protocol) for value, protocol in ((MAGIC, 2), (PROTOCOL, 4), (SYS_INFO, 5)))
    storage = Storage("0", np.ones(3, np.float32))
    data = assemble(dumps({"w": Tensor(storage, 0, (3,), (1,))}), [storage], headers=headers)
    assert read_state_dict_bytes(data)["w"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("variant", sorted(LITE_VARIANTS))
def test_the_shipped_weights_still_load(variant):
    path = default_weights_path(variant)
    state = read_state_dict(path)
    assert len(state) > 250 and all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in state.values())
    assert state["_conv_stem.weight"].dtype == np.float32 and state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert read_state_dict_bytes(Path(path).read_bytes()).keys() == state.keys()
