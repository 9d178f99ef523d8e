"""One gRPC server interceptor that counts every call by method and final status code and times it.

Every service installs it (``services.transport.new_server(service=...)``), so requests, latency and errors
look the same on each dashboard panel whatever the service.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Histogram

RPC_REQUESTS = Counter("hetlora_grpc_requests_total", "gRPC calls handled", ["service", "method", "code"])
RPC_SECONDS = Histogram("hetlora_grpc_request_duration_seconds", "gRPC call latency", ["service", "method"])


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every call by method and final status code and times it (streams until their last message)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._streaming(handler.unary_stream, method))
        return handler

    def _record(self, method: str, context: grpc.ServicerContext, started: float, failed: bool) -> None:
        code = context.code() if hasattr(context, "code") else None  # set by abort()/set_code()
        name = code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if failed else "OK")
        RPC_REQUESTS.labels(self.service, method, name).inc()
        RPC_SECONDS.labels(self.service, method).observe(time.perf_counter() - started)

    def _unary(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            started, failed = time.perf_counter(), True
            try:
                response = behaviour(request, context)
                failed = False
                return response
            finally:
                self._record(method, context, started, failed)

        return wrapped

    def _streaming(self, behaviour: Callable[..., Iterator[Any]], method: str) -> Callable[..., Iterator[Any]]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started, failed = time.perf_counter(), True
            try:
                yield from behaviour(request, context)
                failed = False
            finally:
                self._record(method, context, started, failed)

        return wrapped


class AioMetricsInterceptor(grpc.aio.ServerInterceptor):
    """``MetricsInterceptor`` for ``grpc.aio`` servers (unary, client-streaming and server-streaming methods;
    a server-streaming one may be an async generator or a coroutine writing through ``context.write``)."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return handler._replace(unary_unary=self._timed(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._timed(handler.stream_unary, method))
        if handler.unary_stream:
            timed = self._timed if inspect.iscoroutinefunction(handler.unary_stream) else self._timed_stream
            return handler._replace(unary_stream=timed(handler.unary_stream, method))
        return handler

    def _record(self, method: str, context: grpc.aio.ServicerContext, started: float, failed: bool) -> None:
        code = context.code()
        name = code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if failed else "OK")
        RPC_REQUESTS.labels(self.service, method, name).inc()
        RPC_SECONDS.labels(self.service, method).observe(time.perf_counter() - started)

    def _timed_stream(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, failed = time.perf_counter(), True
            try:
                async for response in behaviour(request, context):
                    yield response
                failed = False
            finally:
                self._record(method, context, started, failed)

        return wrapped

    def _timed(self, behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, failed = time.perf_counter(), True
            try:
                response = await behaviour(request, context)
                failed = False
                return response
            finally:
                self._record(method, context, started, failed)

        return wrapped
