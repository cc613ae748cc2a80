"""The IDX file format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/), gzipped or not.

Layout: two zero bytes, a type code, the number of dimensions d, then d big-endian uint32 sizes, then the
values in C order, big-endian. Files are checked strictly (a truncated download or a file of the wrong
kind is rejected with a message naming it) because a silently short dataset would train on garbage.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..echo import cut
from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> big-endian numpy dtype
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_MAX_DIMS = 8


def _raw_bytes(path: Path) -> bytes:
    name = cut(str(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {name}: {exc.strerror or cut(str(exc))}") from exc
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"IDX file {name} is a broken gzip file ({cut(str(exc))}); it is probably truncated: "
                        f"replace it with a complete copy") from exc


def read_idx(path: str | Path) -> Tensor:
    """The array stored in an IDX file (gzipped or not), as a tensor of the file's dtype and shape."""
    path = Path(path)
    raw = _raw_bytes(path)
    name = cut(str(path))
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{name} is not an IDX file: it must start with two zero bytes, a type code and "
                        f"the number of dimensions (got {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{name} is not an IDX file: unknown type code 0x{code:02x} (known: "
                        + ", ".join(f"0x{c:02x}" for c in IDX_DTYPES) + ")")
    if not 1 <= ndim <= _MAX_DIMS:
        raise DataError(f"{name} is not an IDX file: it declares {ndim} dimensions (1..{_MAX_DIMS} allowed)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {name} is truncated inside its header ({len(raw)} of {header} bytes)")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    present = len(raw) - header
    if present < expected:
        raise DataError(f"IDX file {name} is truncated: its header promises shape {shape} "
                        f"({expected} bytes of data) but it holds {present}; replace it with a complete copy")
    if present > expected:
        raise DataError(f"IDX file {name} has {present - expected} bytes after the {expected} its header "
                        f"promises for shape {shape}: it is not a valid IDX file")
    values = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=header).reshape(shape)
    return torch.from_numpy(values.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | Path, array: Tensor | np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzipped when ``compress`` is true (default: when the name ends in .gz).

    The inverse of :func:`read_idx`; handy for turning your own image arrays into an ``mnist_idx`` directory.
    """
    path = Path(path)
    values = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    native = values.dtype.newbyteorder("=")
    if native not in _CODES:
        raise DataError(f"IDX cannot store dtype {values.dtype}: use one of uint8, int8, int16, int32, "
                        f"float32, float64")
    if not 1 <= values.ndim <= _MAX_DIMS:
        raise DataError(f"IDX stores 1..{_MAX_DIMS} dimensions, got an array of shape {values.shape}")
    code = _CODES[native]
    header = bytes([0, 0, code, values.ndim]) + np.asarray(values.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(values, dtype=IDX_DTYPES[code]).tobytes()
    if compress is None:
        compress = path.suffix == ".gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path
