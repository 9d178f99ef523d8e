"""One gRPC call from a command-line tool: a server's refusal is a one-line message, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import grpc

T = TypeVar("T")


def rpc_or_exit(call: Callable[[], T]) -> T:
    """Run one call; a gRPC error becomes ``hetlora: CODE: details`` on stderr and exit status 1."""
    try:
        return call()
    except grpc.RpcError as e:
        print(f"hetlora: {e.code().name}: {e.details()}", file=sys.stderr)
        raise SystemExit(1) from None
