"""Network weights as safetensors bytes, never pickle; loading refuses anything else.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype,
shape, byte offsets) and the raw tensor bytes: loading it runs no code, unlike `torch.load` of a
pickle (or a torch.save zip of pickles). `check_safetensors` inspects the header before the bytes
reach the parser, so a pickle, a zip or a truncated file is refused with a message naming it.
Weights travel as numpy arrays (`safetensors.numpy`): the driver never needs torch to hold,
save or broadcast them. safetensors is part of the optional `neural` extra, so it is imported
where bytes are made or parsed, not with this module.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

__all__ = ["FILE_NAME", "WeightsFormatError", "check_safetensors", "from_bytes", "to_bytes"]

FILE_NAME = "weights.safetensors"
# a header this large is not one (the format itself caps it at 100 MB)
_MAX_HEADER = 100_000_000
_MAGIC = {b"PK\x03\x04": "a zip archive (torch.save's format: pickles inside)", b"\x80": "a Python pickle"}


class WeightsFormatError(ValueError):
    """The bytes are not a safetensors file: refused, never unpickled."""


def check_safetensors(data: bytes, where: str = "weights") -> None:
    """Raise `WeightsFormatError` unless `data` is a well-formed safetensors file.

    >>> check_safetensors(to_bytes({"w": np.zeros(2, np.float32)}))
    >>> check_safetensors(b"\\x80\\x04\\x95...")
    Traceback (most recent call last):
    ...
    recospark.models.neural.weights.WeightsFormatError: weights: not a safetensors file (it looks like a Python pickle); weights are only loaded from safetensors, never unpickled
    """

    def refuse(why: str) -> WeightsFormatError:
        return WeightsFormatError(f"{where}: not a safetensors file ({why}); weights are only loaded from safetensors, never unpickled")

    why = _malformed(data)
    if why is None:
        return
    # Only a file that is not safetensors is named by its first bytes: a safetensors header length
    # may itself start with 0x80, pickle's first byte.
    for magic, what in _MAGIC.items():
        if data[: len(magic)] == magic:
            raise refuse(f"it looks like {what}")
    raise refuse(why)


def _malformed(data: bytes) -> str | None:
    """Why `data` is not a well-formed safetensors file, or None when it is one."""
    if len(data) < 8:
        return f"{len(data)} bytes"
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(_MAX_HEADER, len(data) - 8):
        return f"header length {size} does not fit in {len(data)} bytes"
    try:
        header = json.loads(data[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    body = len(data) - 8 - size
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= body):
            return f"tensor {name!r} has no valid data_offsets"
    return None


def to_bytes(tensors: Mapping[str, np.ndarray]) -> bytes:
    """safetensors bytes of named numpy arrays (made contiguous)."""
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(value) for name, value in tensors.items()})


def from_bytes(data: bytes, where: str = "weights") -> dict[str, np.ndarray]:
    """Named numpy arrays from safetensors bytes, after `check_safetensors`."""
    from safetensors.numpy import load

    check_safetensors(data, where)
    try:
        return dict(load(data))
    except Exception as err:  # the parser's own checks (dtype, shape vs. offsets)
        raise WeightsFormatError(f"{where}: not a valid safetensors file ({err})") from None
