"""Legacy torch weights files built without torch: the seed corpus of fuzz/weights_target.py and the
crafted files of tests/test_weights_reader.py.

    python -m fuzz.weights_seeds        # (re)writes fuzz/corpus/weights/seed-*

A file is what torch.save wrote before 1.6: three header pickles (magic number, protocol, sys info),
the state dict pickle (an OrderedDict of name -> torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...), each storage a persistent id), the pickled storage keys, then each storage as an
int64 count and its raw little-endian bytes. `Call` puts any global call into a pickle (os.system ...),
which is how the hostile seeds are made; pickling runs nothing.
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass, field

import numpy as np

from fuzz import CORPUS

MAGIC, PROTOCOL = 0x1950A86A20F9469CFC6C, 1001      # torch_weights.LEGACY_MAGIC, LEGACY_PROTOCOL
SYS_INFO = {"protocol_version": PROTOCOL, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
KINDS = {"float32": "FloatStorage", "int64": "LongStorage", "float16": "HalfStorage", "uint8": "ByteStorage"}


@dataclass(frozen=True)
class Name:
    """A global as a pickle names it (`module name`), whether or not it can be imported here."""
    module: str
    name: str

    def __call__(self, *args):                       # pickle's save_reduce wants a callable
        raise TypeError("a stand-in; never called")


@dataclass(frozen=True)
class Call:
    """`module.name(*args)` when unpickled by a plain unpickler."""
    function: Name
    args: tuple


@dataclass
class Storage:
    key: str
    data: np.ndarray                                 # 1-D; its dtype names the storage class
    numel: int | None = None                         # what the persistent id claims (default: the truth)

    @property
    def claimed(self) -> int:
        return self.data.size if self.numel is None else self.numel


@dataclass
class Tensor:
    storage: Storage
    offset: int
    shape: tuple
    stride: tuple
    extra: tuple = field(default=(False,))           # requires_grad (then the backward hooks)


class TorchPickler(pickle._Pickler):
    """pickle's Python pickler, taught torch's names: storages by persistent id, tensors by reduce."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_name(self, obj: Name) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Name] = save_name

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            kind = KINDS[obj.data.dtype.name]
            return "storage", Name("torch", kind), obj.key, "cpu", obj.claimed
        return None

    def reducer_override(self, obj):
        if isinstance(obj, Tensor):
            args = (obj.storage, obj.offset, obj.shape, obj.stride, *obj.extra, collections.OrderedDict())
            return Name("torch._utils", "_rebuild_tensor_v2"), args
        if isinstance(obj, Call):
            return obj.function, obj.args
        return NotImplemented


def dumps(value, protocol: int = 2) -> bytes:
    buffer = io.BytesIO()
    TorchPickler(buffer, protocol).dump(value)
    return buffer.getvalue()


def legacy_file(tensors: dict, *, header: tuple | None = None, keys: list | None = None,
                storages: list[Storage] | None = None) -> bytes:
    """The bytes of a legacy file holding `tensors` (name -> Tensor, or anything else to pickle)."""
    found = {t.storage.key: t.storage for t in tensors.values() if isinstance(getattr(t, "storage", None), Storage)}
    storages = list(found.values()) if storages is None else storages
    return assemble(dumps(collections.OrderedDict(tensors)), storages,
                    headers=tuple(dumps(value) for value in (header or (MAGIC, PROTOCOL, SYS_INFO))),
                    keys=dumps([s.key for s in storages] if keys is None else keys))


def assemble(state: bytes, storages: list[Storage], *, headers: tuple[bytes, ...] | None = None,
             keys: bytes | None = None) -> bytes:
    """A legacy file from pickles already made (the three header pickles, the state dict's, the keys')."""
    parts = list(headers or (dumps(MAGIC), dumps(PROTOCOL), dumps(SYS_INFO)))
    parts += [state, dumps([s.key for s in storages]) if keys is None else keys]
    for storage in storages:                         # the count says what the persistent id claims
        little = storage.data.astype(storage.data.dtype.newbyteorder("<"))
        parts.append(struct.pack("<q", storage.claimed) + little.tobytes())
    return b"".join(parts)


def plain(array: np.ndarray, key: str) -> Tensor:
    """A C-contiguous tensor over a storage of its own."""
    array = np.array(array, order="C")              # (ascontiguousarray would make a 0-d array 1-d)
    strides = tuple(s // array.itemsize for s in array.strides)
    return Tensor(Storage(key, array.ravel()), 0, array.shape, strides)


def sample() -> dict[str, Tensor]:
    """A small state dict like a real one: conv and linear weights, a transposed view, an int64 counter,
    two tensors sharing one storage."""
    shared = Storage("shared", np.arange(10, dtype=np.float32))
    return {"conv.weight": plain(np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "0"),
            "fc.weight.t": Tensor(Storage("1", np.arange(6, dtype=np.float32)), 0, (3, 2), (1, 3)),
            "bn.num_batches_tracked": plain(np.array(7, dtype=np.int64), "2"),
            "half.weight": plain(np.array([0.5, -1.0], dtype=np.float16), "3"),
            "first": Tensor(shared, 0, (4,), (1,)), "second": Tensor(shared, 4, (3, 2), (2, 1))}


def hostile_seeds() -> dict[str, bytes]:
    """Shapes the reader must refuse with a WeightsError: globals, bad strides, sizes and counts."""
    system = Call(Name("os", "system"), ("true",))
    data = Storage("0", np.arange(8, dtype=np.float32))
    memo_bomb = b"\x80\x02K\x01r\x00\x00\x00\x10."                # LONG_BINPUT 0x10000000
    return {
        "global-in-state-dict": legacy_file({"w": system}),
        "global-in-header": legacy_file({}, header=(system, PROTOCOL, SYS_INFO)),
        "global-in-keys": legacy_file({}, keys=[system]),
        "eval-as-tensor-storage": legacy_file({"w": Tensor(Call(Name("builtins", "eval"), ("1",)), 0, (1,), (1,))}),
        "negative-stride": legacy_file({"w": Tensor(data, 0, (4,), (-(1 << 20),))}),   # 12 MB before the storage
        "negative-stride-reversed": legacy_file({"w": Tensor(data, 7, (8,), (-1,))}),
        "negative-offset": legacy_file({"w": Tensor(data, -4, (4,), (1,))}),
        "negative-size": legacy_file({"w": Tensor(data, 0, (-2, 4), (4, 1))}),
        "outside-storage": legacy_file({"w": Tensor(data, 6, (4,), (1,))}),
        "zero-stride-giant": legacy_file({"w": Tensor(data, 0, (1 << 20, 1 << 20), (0, 0))}),
        "float-stride": legacy_file({"w": Tensor(data, 0, (2,), (1.5,))}),
        "numel-lie": legacy_file({"w": Tensor(Storage("0", np.zeros(4, np.float32), numel=1 << 40), 0, (4,), (1,))}),
        "memo-bomb-header": assemble(dumps({}), [], headers=(memo_bomb, dumps(PROTOCOL), dumps(SYS_INFO))),
        "zip-signature": b"PK\x03\x04" + b"\x00" * 26,
    }


def seeds() -> dict[str, bytes]:
    valid = legacy_file(sample())
    return {"valid-sample": valid, "valid-empty": legacy_file({}), "truncated": valid[:-7], **hostile_seeds()}


def main() -> None:
    folder = CORPUS / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for name, data in seeds().items():
        (folder / f"seed-{name}").write_bytes(data)
    print(f"wrote {len(seeds())} weights seeds under {folder}")


if __name__ == "__main__":
    main()
