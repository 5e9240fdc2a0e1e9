"""A fast reader of a GGUF file's header: the metadata scalars, the tensor table, and the tensors'
bytes memory-mapped in the shapes `gguf.dequantize` takes.

Why not a library's: `gguf.GGUFReader` builds a numpy view for every element of every metadata
array, so a file with a large vocabulary pays for it on every read: about 10 s for
Gemma-3-270M's 262k tokens on 2 cores (measured), read twice by a transformers load (config,
then weights). transformers' own header reader (`transformers.integrations.gguf.reader`, since
5.17; we support 5.0) rejects the tensor table of any file with a Q5_0, Q5_1 or Q8_1 tensor,
and Gemma-3's Q4_K_M file has Q5_0 ones. This scanner walks the header, keeps short arrays (up to
`KEEP_ARRAY` elements) and records only the length of long ones, and reads Gemma-3's header in
0.03 s. It reads little-endian files of GGUF versions 2 and 3 (what llama.cpp writes); anything
else raises `UnsupportedGGUF`, and the caller falls back to transformers' loader. Tensor data is
shaped exactly as GGUFReader shapes it (typed arrays for F16/F32/F64/I8-I64, byte rows for the
block-quantised types), and the tests hold the two equal.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Arrays longer than this are skipped (their length is kept): tokenizer vocabularies, scores,
# merges. Model arrays (per-layer head counts, ...) are far shorter.
KEEP_ARRAY = 4096

_MAGIC = 0x46554747  # "GGUF", little-endian
_DEFAULT_ALIGNMENT = 32
# GGUF metadata value types (gguf.GGUFValueType) -> struct format of one element.
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# ggml tensor types stored as plain values (gguf.GGMLQuantizationType F32, F16, I8, I16, I32,
# I64, F64); every other type is stored as blocks of bytes.
_TYPED = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
          28: np.float64}


class UnsupportedGGUF(ValueError):
    """A file this scanner does not read (big-endian, an old version): use gguf's reader."""


@dataclass(frozen=True)
class SkippedArray:
    """A metadata array longer than KEEP_ARRAY: its element type and length, not its values."""

    value_type: int
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class TensorInfo:
    name: str
    qtype: int  # gguf.GGMLQuantizationType
    dims: tuple[int, ...]  # GGUF order: the fastest-varying dimension first
    offset: int  # absolute byte offset of the data in the file

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical numpy shape (dims reversed), as transformers' loaders see it."""
        return tuple(reversed(self.dims))


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]  # in file order
    _map: Any = field(default=None, repr=False)

    def tensor_data(self, name: str) -> np.ndarray:
        """The tensor's bytes, memory-mapped, in the shape and dtype GGUFReader gives them."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        info = self.tensors[name]
        qtype = GGMLQuantizationType(info.qtype)
        n = int(np.prod(info.dims))
        if self._map is None:
            self._map = np.memmap(self.path, mode="r")
        if info.qtype in _TYPED:
            dtype = np.dtype(_TYPED[info.qtype])
            raw = self._map[info.offset:info.offset + n * dtype.itemsize]
            return raw.view(dtype).reshape(info.shape)
        block, type_size = GGML_QUANT_SIZES[qtype]
        raw = self._map[info.offset:info.offset + n * type_size // block]
        return raw.reshape(quant_shape_to_byte_shape(info.shape, qtype))

    def dequantized(self, name: str) -> np.ndarray:
        """The tensor as float32 (gguf's dequantisation), in its logical shape."""
        from gguf import GGMLQuantizationType, dequantize

        data = dequantize(self.tensor_data(name), GGMLQuantizationType(self.tensors[name].qtype))
        return np.asarray(data, dtype=np.float32)


class _Cursor:
    """Little-endian reads from a buffer, advancing an offset."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str):
        try:
            values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        except struct.error as e:
            raise ValueError(f"{self.path}: the GGUF header ends early at byte {self.pos} "
                             f"(a truncated or damaged file): {e}") from None
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str:
        n = self.unpack("Q")
        raw = bytes(self.buf[self.pos:self.pos + n])
        if len(raw) != n:
            raise ValueError(f"{self.path}: the GGUF header ends early at byte {self.pos} "
                             "(a truncated or damaged file)")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):  # each string is its uint64 length, then its bytes
            self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("I"), self.unpack("Q")
            if count <= KEEP_ARRAY:
                return [self.value(etype) for _ in range(count)]
            if etype == _STRING:
                self.skip_strings(count)
            elif etype in _SCALAR:
                self.pos += count * struct.calcsize("<" + _SCALAR[etype])
            else:  # arrays of arrays: walk them
                for _ in range(count):
                    self.value(etype)
            return SkippedArray(etype, count)
        raise ValueError(f"{self.path}: unknown GGUF metadata value type {vtype} at byte "
                         f"{self.pos} (a damaged file, or a newer GGUF than this reader knows)")


def read_header(path: str | Path) -> GGUFHeader:
    """The header of the GGUF file at `path` (metadata, tensor table); tensors stay on disk."""
    path = Path(path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        cur = _Cursor(buf, path)
        if len(buf) < 24 or cur.unpack("I") != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
        version = cur.unpack("I")
        if version & 0xFFFF == 0:
            raise UnsupportedGGUF(f"{path}: a big-endian GGUF file")
        if version not in (2, 3):
            raise UnsupportedGGUF(f"{path}: GGUF version {version} (this reader knows 2 and 3)")
        n_tensors, n_kv = cur.unpack("QQ")
        metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.unpack("I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("I")
            dims = tuple(cur.unpack("Q") for _ in range(n_dims))
            qtype, offset = cur.unpack("I"), cur.unpack("Q")
            infos.append((name, qtype, dims, offset))
        align = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        if align <= 0 or align & (align - 1):
            raise ValueError(f"{path}: general.alignment {align} is not a power of two")
        start = -(-cur.pos // align) * align
    finally:
        buf.close()
    tensors = {}
    for name, qtype, dims, offset in infos:
        if name in tensors:
            raise ValueError(f"{path}: tensor {name!r} appears twice in the GGUF file")
        tensors[name] = TensorInfo(name, qtype, dims, start + offset)
    _check_sizes(path, tensors)
    return GGUFHeader(path, version, metadata, tensors)


def _check_sizes(path: Path, tensors: dict[str, TensorInfo]) -> None:
    """Every tensor's bytes must lie inside the file: a file cut short is found when its header is
    read (a recipe's preflight), not when the missing tensor is dequantised."""
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:  # the loader says to install gguf
        return
    size, blocks = path.stat().st_size, {int(k): v for k, v in GGML_QUANT_SIZES.items()}
    for info in tensors.values():
        n = int(np.prod(info.dims))
        if info.qtype in _TYPED:
            nbytes = n * np.dtype(_TYPED[info.qtype]).itemsize
        elif info.qtype in blocks:
            block, type_size = blocks[info.qtype]
            nbytes = n * type_size // block
        else:
            raise ValueError(f"{path}: tensor {info.name!r} has an unknown type {info.qtype}")
        if info.offset + nbytes > size:
            raise ValueError(f"{path}: tensor {info.name!r} ends at byte {info.offset + nbytes} "
                             f"but the file has {size} bytes (a truncated file)")
