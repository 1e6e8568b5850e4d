"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without PyTorch.

Why: the default model's ImageNet weights ship as such a file and the gateway must not depend on
PyTorch. The legacy format is a sequence of pickles followed by raw storages:

    magic number, protocol version, sys info      three small pickles
    the state dict                               a pickle whose tensors name storages by
                                                 persistent id ('storage', <type>, key, device, numel)
    the storage keys                             a pickled list, in the order the storages follow
    per storage: int64 element count, raw bytes  little-endian

Pickle runs whatever globals a file names, so the main pickle is read with an Unpickler that
resolves only the four globals a state dict needs, to inert local stand-ins.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from image_gateway.models.errors import WeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
ZIP_SIGNATURE = b"PK\x03\x04"

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
    """Stand-in for torch._utils._rebuild_tensor_v2: remembers where the tensor's data lies."""
    if not isinstance(storage, _StorageRef):
        raise WeightsError("tensor refers to something other than a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only the globals of a plain state dict; anything else is refused, never imported."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise WeightsError(f"weights file names a disallowed global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _device, numel = pid[:5]
        if not isinstance(dtype, np.dtype):
            raise WeightsError(f"unsupported storage type {dtype!r}")
        return _StorageRef(str(key), dtype, int(numel))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Return {tensor name: float32/int array} from a legacy-format torch state dict file.

    Raises WeightsError on anything unreadable: wrong format, disallowed globals, truncation.
    """
    try:
        with open(path, "rb") as stream:
            return _read_legacy(stream, path)
    except WeightsError:
        raise
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error) as exc:
        raise WeightsError(f"weights file {path} is corrupt or truncated: {exc!r}") from exc


def _read_legacy(stream: BinaryIO, path: str) -> dict[str, np.ndarray]:
    if stream.read(4) == ZIP_SIGNATURE:
        raise WeightsError(
            f"{path} is a zip-format torch checkpoint; only the legacy format is supported")
    stream.seek(0)
    _check_header(stream, path)
    state = _StateDictUnpickler(stream).load()
    if not isinstance(state, dict) or not all(isinstance(t, _TensorRef) for t in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    storages = _read_storages(stream, path, pickle.load(stream), state.values())
    return {name: _materialise(ref, storages[ref.storage.key]) for name, ref in state.items()}


def _check_header(stream: BinaryIO, path: str) -> None:
    if pickle.load(stream) != LEGACY_MAGIC:
        raise WeightsError(f"{path} is not a torch legacy-format file (bad magic number)")
    if pickle.load(stream) != LEGACY_PROTOCOL:
        raise WeightsError(f"{path} has an unsupported torch protocol version")
    sys_info = pickle.load(stream)
    if not sys_info.get("little_endian", False):
        raise WeightsError(f"{path} was written big-endian")


def _read_storages(stream: BinaryIO, path: str, keys: list, tensors) -> dict[str, np.ndarray]:
    refs = {t.storage.key: t.storage for t in tensors}
    storages = {}
    for key in keys:
        ref = refs.get(str(key))
        if ref is None:
            raise WeightsError(f"{path}: storage {key} is not used by any tensor")
        (numel,) = struct.unpack("<q", _read_exact(stream, 8, path))
        raw = _read_exact(stream, numel * ref.dtype.itemsize, path)
        storages[ref.key] = np.frombuffer(raw, dtype=ref.dtype, count=numel)
    missing = set(refs) - set(storages)
    if missing:
        raise WeightsError(f"{path}: storages {sorted(missing)} are missing")
    if stream.read(1):
        raise WeightsError(f"{path}: unexpected trailing data")
    return storages


def _read_exact(stream: BinaryIO, count: int, path: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise WeightsError(f"weights file {path} is truncated")
    return data


def _materialise(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    """Copy a (possibly strided) view out of its storage; torch strides count elements."""
    if len(ref.shape) != len(ref.stride):
        raise WeightsError("tensor shape and stride disagree")
    extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True)) + 1
    if min(ref.shape, default=1) > 0 and (ref.offset < 0 or extent > storage.size):
        raise WeightsError("tensor lies outside its storage")
    base = storage[ref.offset:]
    strides = tuple(s * storage.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(base, shape=ref.shape, strides=strides, writeable=False)
    return np.array(view, order="C", copy=True)
