"""Content digests: a canonical SHA-256 of nested Python, NumPy and torch values.

What a checkpoint's ``digest`` and ``weights_digest`` are made of
(:func:`breastai.models.checkpoint.state_digest`): the same contents give the same digest however
the containers were built, on any device, and two different values never feed the same bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["content_digest"]


def content_digest(value: Any) -> str:
    """``sha256:<hex>`` of ``value``: tensors and arrays by dtype, shape and bytes; mappings in sorted key
    order; lists and tuples alike; scalars and strings by type and exact value."""
    h = hashlib.sha256()
    _feed(h, value)
    return f"sha256:{h.hexdigest()}"


def _feed(h: Any, value: Any) -> None:
    """Feed ``value`` to the hash as a type tag, its length or shape, then its contents.

    The tag and length keep two different values from feeding the same bytes (``["ab"]`` vs
    ``["a", "b"]``, a float vs a string of its digits).
    """
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        t = (t.to_dense() if t.layout != torch.strided else t).contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, np.ndarray) and value.dtype != object:
        h.update(f"A{value.dtype.str}{value.shape};".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, np.generic):  # a NumPy scalar hashes as the Python value it stands for
        _feed(h, value.item())
    elif isinstance(value, Mapping):
        h.update(f"D{len(value)};".encode())
        for k, v in sorted(value.items(), key=lambda kv: (type(kv[0]).__name__, str(kv[0]))):
            _feed(h, k)
            _feed(h, v)
    elif isinstance(value, (list, tuple, np.ndarray)):  # a list and a tuple of the same items are one value
        h.update(f"L{len(value)};".encode())
        for v in value:
            _feed(h, v)
    elif isinstance(value, str):
        b = value.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)};".encode())
        h.update(b)
    elif value is None or isinstance(value, (bool, int, float)):  # repr is exact for these (floats round-trip)
        h.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        r = repr(value).encode("utf-8", "backslashreplace")
        h.update(f"O{type(value).__qualname__}{len(r)};".encode())
        h.update(r)
