"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without PyTorch.

Why: the default model's ImageNet weights ship as such a file and the gateway must not depend on
PyTorch. The legacy format is a sequence of pickles followed by raw storages:

    magic number, protocol version, sys info      three small pickles
    the state dict                               a pickle whose tensors name storages by
                                                 persistent id ('storage', <type>, key, device, numel)
    the storage keys                             a pickled list, in the order the storages follow
    per storage: int64 element count, raw bytes  little-endian

Pickle calls whatever globals a file names, so no pickle here goes through the pickle module's plain
load functions: the header and key pickles are read by an Unpickler that resolves no global at all,
the state dict by one that resolves exactly the names a state dict needs (collections.OrderedDict,
torch._utils._rebuild_tensor_v2 and the torch storage classes, by name) to inert local stand-ins that
the pickle's BUILD opcodes cannot change. Any other global is a WeightsError naming it, never
imported. Before a pickle is unpickled, pickletools walks its opcodes (running nothing) to bound its
memo indices. Sizes, strides and offsets must be non-negative integers and every element a tensor can
reach must lie inside its storage; every count read from the file is checked against the bytes left.
So a hostile file is a WeightsError: never code run, a crash, an out-of-bounds read or a huge allocation.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from image_gateway.models.errors import WeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
ZIP_SIGNATURE = b"PK\x03\x04"
MAX_DIMS = 32                     # numpy's limit in 1.x; no layer's weight has more than 5
MAX_MEMO = 1 << 20                # memo slots a pickle may name (the unpickler allocates up to twice the index)
MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})

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
# What a malformed pickle or storage table raises inside the readers; each becomes a WeightsError.
CORRUPT = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
           struct.error, OverflowError, MemoryError, RecursionError)


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str                     # "FloatStorage" ...: the torch class, by name only


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _count(value, what: str) -> int:
    """A non-negative Python int from the file (bool, float and negative values refused)."""
    if type(value) is not int or value < 0:
        raise WeightsError(f"tensor {what} must be a non-negative integer, not {value!r}"[:200])
    return value


def _counts(values, what: str) -> tuple[int, ...]:
    if not isinstance(values, tuple | list) or len(values) > MAX_DIMS:
        raise WeightsError(f"tensor {what} must be a tuple of at most {MAX_DIMS} integers")
    return tuple(_count(value, what) for value in values)


class _Rebuild:
    """Stand-in for torch._utils._rebuild_tensor_v2: remembers where the tensor's data lies.
    No __dict__ and no slots, so a pickle cannot change it."""
    __slots__ = ()

    def __call__(self, storage, storage_offset, size, stride, *_unused) -> _TensorRef:
        if not isinstance(storage, _StorageRef):
            raise WeightsError("tensor refers to something other than a storage")
        return _TensorRef(storage, _count(storage_offset, "offset"), _counts(size, "size"), _counts(stride, "stride"))


def _unpickle(stream: BinaryIO, unpickler: type[pickle.Unpickler]):
    """The next pickle of `stream`, read by `unpickler` after a walk over its opcodes (pickletools, which
    runs nothing) has checked that its memo indices are small: `LONG_BINPUT 0x10000000`, ten bytes, would
    make the C unpickler allocate and zero a 4 GB memo."""
    start = stream.tell()
    for opcode, arg, _position in pickletools.genops(stream):
        if opcode.name in MEMO_OPCODES and int(arg) > MAX_MEMO:
            raise WeightsError(f"a pickle of the weights file uses memo slot {arg} (at most {MAX_MEMO})")
    stream.seek(start)
    return unpickler(stream).load()


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Plain data only (numbers, strings, lists, dicts): any global or persistent id is refused."""

    def find_class(self, module: str, name: str):
        raise WeightsError(f"weights file names a disallowed global {module}.{name}"[:300])

    def persistent_load(self, pid):
        raise WeightsError("weights file has a persistent id outside the state dict")


class _StateDictUnpickler(_NoGlobalsUnpickler):
    """Resolves only the globals of a plain state dict; anything else is refused, never imported."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _Rebuild()
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError(f"unexpected persistent id {pid!r}"[:200])
        _, kind, key, _device, numel = pid[:5]
        if not isinstance(kind, _StorageType) or not isinstance(key, str):
            raise WeightsError(f"unsupported storage {kind!r} {key!r}"[:200])
        return _StorageRef(key, STORAGE_DTYPES[kind.name], _count(numel, "storage size"))


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Return {tensor name: float32/int array} from a legacy-format torch state dict file.

    Raises WeightsError on anything unreadable: wrong format, disallowed globals, truncation.
    """
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    with stream:
        return load_state_dict(stream, path)


def load_state_dict(stream: BinaryIO, name: str = "<stream>") -> dict[str, np.ndarray]:
    """`read_state_dict` on an open seekable binary stream (a file, io.BytesIO) named `name` in errors."""
    try:
        return _read_legacy(stream, name)
    except WeightsError:
        raise
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {name}: {exc}") from exc
    except CORRUPT as exc:
        raise WeightsError(f"weights file {name} is corrupt or truncated: {exc!r}"[:400]) from None


def _read_legacy(stream: BinaryIO, path: str) -> dict[str, np.ndarray]:
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    if stream.read(4) == ZIP_SIGNATURE:
        raise WeightsError(
            f"{path} is a zip-format torch checkpoint; only the legacy format is supported")
    stream.seek(0)
    _check_header(stream, path)
    state = _unpickle(stream, _StateDictUnpickler)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(t, _TensorRef)
                                              for k, t in state.items()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    keys = _unpickle(stream, _NoGlobalsUnpickler)
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys) or len(set(keys)) != len(keys):
        raise WeightsError(f"{path}: the storage keys are not a list of distinct names")
    storages = _read_storages(stream, path, size, keys, state.values())
    return {name: _materialise(ref, storages[ref.storage.key]) for name, ref in state.items()}


def _check_header(stream: BinaryIO, path: str) -> None:
    if _unpickle(stream, _NoGlobalsUnpickler) != LEGACY_MAGIC:
        raise WeightsError(f"{path} is not a torch legacy-format file (bad magic number)")
    if _unpickle(stream, _NoGlobalsUnpickler) != LEGACY_PROTOCOL:
        raise WeightsError(f"{path} has an unsupported torch protocol version")
    sys_info = _unpickle(stream, _NoGlobalsUnpickler)
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise WeightsError(f"{path} was written big-endian (or says nothing of its byte order)")


def _read_storages(stream: BinaryIO, path: str, size: int, keys: list[str], tensors) -> dict[str, np.ndarray]:
    refs = {t.storage.key: t.storage for t in tensors}
    storages = {}
    for key in keys:
        ref = refs.get(key)
        if ref is None:
            raise WeightsError(f"{path}: storage {key!r} is not used by any tensor"[:300])
        (numel,) = struct.unpack("<q", _read_exact(stream, 8, size, path))
        if numel != ref.numel:
            raise WeightsError(f"{path}: storage {key!r} holds {numel} elements, its tensors say {ref.numel}"[:300])
        raw = _read_exact(stream, numel * ref.dtype.itemsize, size, path)
        storages[key] = np.frombuffer(raw, dtype=ref.dtype, count=numel)
    missing = set(refs) - set(storages)
    if missing:
        raise WeightsError(f"{path}: storages {sorted(missing)[:5]} are missing")
    if stream.read(1):
        raise WeightsError(f"{path}: unexpected trailing data")
    return storages


def _read_exact(stream: BinaryIO, count: int, size: int, path: str) -> bytes:
    """`count` bytes, refused before reading when the file has fewer left (no allocation for a lie)."""
    if count > size - stream.tell():
        raise WeightsError(f"weights file {path} is truncated")
    data = stream.read(count)
    if len(data) != count:
        raise WeightsError(f"weights file {path} is truncated")
    return data


def _materialise(ref: _TensorRef, storage: np.ndarray) -> np.ndarray:
    """Copy a (possibly strided) view out of its storage; torch strides count elements. Every element
    the view can reach lies inside the storage, and the copy is no larger than the storage."""
    shape, stride, offset = _counts(ref.shape, "size"), _counts(ref.stride, "stride"), _count(ref.offset, "offset")
    if len(shape) != len(stride):
        raise WeightsError("tensor shape and stride disagree")
    if offset > storage.size:
        raise WeightsError("tensor starts outside its storage")
    if 0 in shape:
        return np.zeros(shape, storage.dtype)
    if int(np.prod(shape, dtype=object)) > storage.size:
        raise WeightsError("tensor has more elements than its storage")
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if last >= storage.size:
        raise WeightsError("tensor lies outside its storage")
    strides = tuple(s * storage.itemsize if n > 1 else 0 for n, s in zip(shape, stride, strict=True))
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=shape, strides=strides, writeable=False)
    return np.array(view, order="C", copy=True)


def read_state_dict_bytes(data: bytes, name: str = "<bytes>") -> dict[str, np.ndarray]:
    """`read_state_dict` on the bytes of a file (the fuzz target's entry)."""
    return load_state_dict(io.BytesIO(data), name)

