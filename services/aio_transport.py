"""``grpc.aio`` servers for the services whose calls wait: a waiting call holds no thread.

A device long-polling for the next SecAgg+ stage is a registered waker (``services.wakeups``), not a blocked
worker, so hundreds of waiting devices cost memory, not a thread pool. The server runs on its own event-loop
thread and is driven from synchronous code (the CLI, the tests), so callers keep the same start/stop shape.
As with the thread-pool servers (``services.transport``), request bytes are parsed by our own handler, so an
undecodable body is INVALID_ARGUMENT naming the message type, never INTERNAL. Every call runs under its
server-side cap and every stream under an idle timeout (``services.deadlines``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from services.deadlines import DeadlineInterceptor, Deadlines
from services.rpc_metrics import AioMetricsInterceptor
from services.transport import TlsFiles, bind, raw_body_handlers

T = TypeVar("T")


class AioServer:
    """A ``grpc.aio.Server`` on a private event-loop thread; ``deadlines`` caps its calls (defaults: the table in
    ``services.deadlines``)."""

    def __init__(
        self, max_message_bytes: int, max_send_bytes: int, service: str, deadlines: Deadlines | None = None
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"{service}-aio", daemon=True)
        self._thread.start()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_send_bytes),
        ]

        # Deadlines innermost: the metrics interceptor then counts a call ended at its cap as DEADLINE_EXCEEDED.
        interceptors = [AioMetricsInterceptor(service), DeadlineInterceptor(deadlines or Deadlines())]

        async def make() -> grpc.aio.Server:
            return grpc.aio.server(options=options, interceptors=interceptors)

        self.server = self.run(make())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def add_servicer(self, service: ServiceDescriptor, servicer: object) -> None:
        """Register ``servicer``'s coroutines (unary, client-streaming) and async generators (server-streaming)."""
        handlers = raw_body_handlers(service, servicer, _parsing, _parsing_stream, _parsing_responses)
        self.server.add_generic_rpc_handlers((handlers,))

    def bind(self, address: str, tls: TlsFiles | None) -> int:
        async def add() -> int:
            return bind(self.server, address, tls)  # type: ignore[arg-type]  # same port API as grpc.Server

        return self.run(add())

    def start(self) -> None:
        self.run(self.server.start())

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds), then the loop and its thread."""
        self.run(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)


async def _parse(body: bytes, request_type: type[Message], context: grpc.aio.ServicerContext) -> Message:
    try:
        return request_type.FromString(body)
    except DecodeError:
        name = request_type.DESCRIPTOR.full_name
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request body is not a valid {name} message")
        raise


def _parsing(
    method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], request_type: type[Message]
) -> Callable[..., Awaitable[Any]]:
    async def handle(body: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await method(await _parse(body, request_type, context), context)

    return handle


def _parsing_stream(
    method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], request_type: type[Message]
) -> Callable[..., Awaitable[Any]]:
    async def handle(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async def parsed() -> AsyncIterator[Message]:
            async for body in bodies:
                yield await _parse(body, request_type, context)

        return await method(parsed(), context)

    return handle


def _parsing_responses(
    method: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]], request_type: type[Message]
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(body: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in method(await _parse(body, request_type, context), context):
            yield response

    return handle
