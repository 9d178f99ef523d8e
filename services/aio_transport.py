"""``grpc.aio`` servers for the services whose calls wait: a waiting call holds no thread.

A device long-polling for the next SecAgg+ stage is a registered waker (``services.wakeups``), not a blocked
worker, so hundreds of waiting devices cost memory, not a thread pool. The server runs on its own event-loop
thread and is driven from synchronous code (the CLI, the tests), so callers keep the same start/stop shape.
As with the thread-pool servers (``services.transport``), request bytes are parsed by our own handler, so an
undecodable body (or stream chunk) is INVALID_ARGUMENT naming the message type, never INTERNAL, and a call
without its one request message is answered too (``SingleRequest``). Every call runs under its server-side cap
and every stream under an idle timeout (``services.deadlines``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from services import errors
from services.deadlines import DeadlineInterceptor, Deadlines
from services.rpc_metrics import AioMetricsInterceptor
from services.transport import TlsFiles, bind, decode, raw_body_handlers

T = TypeVar("T")
log = logging.getLogger("hetlora.services")


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
        # SingleRequest outermost: the two inside see every method in the shape its proto declares.
        caps = deadlines or Deadlines()
        interceptors = [SingleRequest(caps.idle_s), AioMetricsInterceptor(service), DeadlineInterceptor(caps)]

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


class SingleRequest(grpc.aio.ServerInterceptor):
    """Outermost: a method that takes one request message receives it through a request stream here, so a call
    that sends none, or several, is answered INVALID_ARGUMENT naming the method.

    Left to ``grpc.aio``, a call that half-closes without its message is never answered: the handler is not run,
    so no server-side cap ends it, and the client waits for its own deadline (forever without one). The wait for
    the message and the end of the stream is bounded by the streams' idle timeout; it holds no thread.
    """

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not (handler.unary_unary or handler.unary_stream):
            return handler
        method, behaviour = details.method, handler.unary_unary or handler.unary_stream

        async def one(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await _sole(bodies, method, self.wait_s)
            except errors.ServiceError as e:
                log.warning("refused a request from %s: %s", context.peer() or "an unknown peer", e.message)
                await context.abort(e.code, e.message)
                raise  # unreachable: abort raises

        if handler.unary_unary:

            async def unary(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                return await behaviour(await one(bodies, context), context)

            make, adapted = grpc.stream_unary_rpc_method_handler, unary
        elif inspect.isasyncgenfunction(behaviour):

            async def generated(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                async for response in behaviour(await one(bodies, context), context):
                    yield response

            make, adapted = grpc.stream_stream_rpc_method_handler, generated
        else:  # a coroutine writing its responses through context.write (services.deadlines)

            async def written(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
                return await behaviour(await one(bodies, context), context)

            make, adapted = grpc.stream_stream_rpc_method_handler, written
        return make(adapted, handler.request_deserializer, handler.response_serializer)


async def _sole(bodies: AsyncIterator[bytes], method: str, wait_s: float) -> bytes:
    """The one message of a call that must send exactly one, read to the end of its stream within ``wait_s``."""
    got: list[bytes] = []
    timer = asyncio.timeout(wait_s)
    try:
        async with timer:
            async for body in bodies:
                got.append(body)
                if len(got) > 1:
                    break
    except TimeoutError:
        if not timer.expired():
            raise
        sent = "no request message" if not got else "one message but did not end its request stream"
        raise errors.not_yet(f"{method}: in {wait_s:g} s the call sent {sent}; send exactly one, then close") from None
    if len(got) != 1:
        raise errors.request_count(method, "none" if not got else "more than one")
    return got[0]


def _parsing(
    method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], request_type: type[Message]
) -> Callable[..., Awaitable[Any]]:
    async def handle(body: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(body, request_type, context.peer())
        except errors.ServiceError as e:
            await context.abort(e.code, e.message)
        return await method(request, context)

    return handle


def _parsing_stream(
    method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], request_type: type[Message]
) -> Callable[..., Awaitable[Any]]:
    """Chunks are parsed as the servicer takes them, so a bad one raises a ServiceError inside its loop, which its
    ``aio_grpc_errors`` maps like its own errors."""

    async def handle(bodies: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        peer = context.peer()

        async def parsed() -> AsyncIterator[Message]:
            index = 0
            async for body in bodies:
                yield decode(body, request_type, peer, index)
                index += 1

        try:
            return await method(parsed(), context)
        except errors.ServiceError as e:  # a servicer that does not map its errors itself
            await context.abort(e.code, e.message)

    return handle


def _parsing_responses(
    method: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]], request_type: type[Message]
) -> Callable[..., AsyncIterator[Any]]:
    async def handle(body: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            request = decode(body, request_type, context.peer())
        except errors.ServiceError as e:
            await context.abort(e.code, e.message)
        try:
            async for response in method(request, context):
                yield response
        except errors.ServiceError as e:  # a servicer that does not map its errors itself
            await context.abort(e.code, e.message)

    return handle
