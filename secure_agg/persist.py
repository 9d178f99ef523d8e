"""Persisting state objects: a small, explicit JSON encoding (no pickle, so loading cannot run code).

Only the library's own dataclasses and enums listed in ``_TYPES`` can be rebuilt; bytes and arrays are
base64. The output of :func:`dumps` for a client state contains private keys: store it encrypted.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from enum import Enum
from typing import Any, TypeVar

import numpy as np

from secure_agg.buckets import BucketLayout, BucketOutcome, BucketStatus
from secure_agg.client import ClientState
from secure_agg.config import RoundConfig, Stage
from secure_agg.errors import MalformedMessageError
from secure_agg.keys import KeyPair
from secure_agg.messages import AdvertiseKeys
from secure_agg.server import ServerState

_TYPES: dict[str, type] = {
    t.__name__: t
    for t in (
        ClientState,
        ServerState,
        RoundConfig,
        BucketLayout,
        BucketOutcome,
        KeyPair,
        AdvertiseKeys,
        Stage,
        BucketStatus,
    )
}
T = TypeVar("T")


def _enc(v: Any) -> Any:
    if isinstance(v, Enum):
        return {"$enum": type(v).__name__, "v": v.value}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        name = type(v).__name__
        if name not in _TYPES:
            raise TypeError(f"cannot persist {name}")
        return {"$dc": name, "f": {f.name: _enc(getattr(v, f.name)) for f in dataclasses.fields(v)}}
    if isinstance(v, bytes):
        return {"$b": base64.b64encode(v).decode()}
    if isinstance(v, np.ndarray):
        return {"$nd": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode(), "dtype": v.dtype.str}
    if isinstance(v, tuple):
        return {"$t": [_enc(x) for x in v]}
    if isinstance(v, dict):
        return {"$d": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise TypeError(f"cannot persist a {type(v).__name__}")


def _dec(v: Any) -> Any:
    if not isinstance(v, dict):
        return v
    if "$b" in v:
        return base64.b64decode(v["$b"])
    if "$nd" in v:
        return np.frombuffer(base64.b64decode(v["$nd"]), dtype=np.dtype(v["dtype"])).copy()
    if "$t" in v:
        return tuple(_dec(x) for x in v["$t"])
    if "$d" in v:
        return {_dec(k): _dec(x) for k, x in v["$d"]}
    if "$enum" in v:
        return _TYPES[v["$enum"]](v["v"])
    if "$dc" in v:
        return _TYPES[v["$dc"]](**{k: _dec(x) for k, x in v["f"].items()})
    raise ValueError(f"unknown persisted object {sorted(v)}")


def dumps(state: ClientState | ServerState) -> bytes:
    """Serialise a client or server state."""
    return json.dumps(_enc(state), separators=(",", ":")).encode()


def loads(data: bytes, kind: type[T]) -> T:
    """Rebuild a state of the given kind; malformed input raises MalformedMessageError."""
    try:
        obj = _dec(json.loads(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedMessageError(f"not a persisted {kind.__name__}: {exc}") from exc
    if not isinstance(obj, kind):
        raise MalformedMessageError(f"persisted object is a {type(obj).__name__}, not a {kind.__name__}")
    return obj
