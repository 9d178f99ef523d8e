"""Server-side deadlines for the ``grpc.aio`` services: every call ends by its method's cap, whatever the client set.

A client's deadline protects the client; a server that trusted it alone would keep a waker, a buffered upload
or a half-sent task for as long as a broken (or hostile) client liked. So each method has a cap here, and every
stream has an idle timeout: a client stream that sends no chunk for ``idle_s``, or a server stream whose
reader takes no message for ``idle_s``, is ended with DEADLINE_EXCEEDED. Ending a call cancels its handler,
which drops what the call buffered and runs the handler's own clean-up (a long poll removes its registration).

The caps sit above what the handlers themselves wait (a long poll asks for at most ``MAX_POLL_S``), so in normal
operation they never fire: they are the backstop for a stuck handler or a stalled peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from services import errors

log = logging.getLogger("hetlora.services")

MAX_POLL_S = 60.0  # the longest any long poll waits for its answer (GetTask, AwaitStage, GetRoundResult)
POLL_GRACE_S = 10.0  # a long poll's cap: its longest wait plus this, to answer
UNARY_S = 30.0  # every call not listed in CAPS_S
TASK_DOWNLOAD_S = 60.0  # GetTask streams the starting factors after its poll
UPLOAD_S = 300.0  # one SubmitStage upload, all chunks (at most the aggregator's upload limit, 1 GiB)
IDLE_S = 20.0  # a stream with no chunk (client stream) or no message taken (server stream) for this long ends

CAPS_S: Mapping[str, float] = {  # "Service/Method" -> seconds
    "OrchestratorService/GetTask": MAX_POLL_S + POLL_GRACE_S + TASK_DOWNLOAD_S,
    "AggregatorService/AwaitStage": MAX_POLL_S + POLL_GRACE_S,
    "AggregatorService/GetRoundResult": MAX_POLL_S + POLL_GRACE_S,
    "AggregatorService/SubmitStage": UPLOAD_S,
}


@dataclass(frozen=True)
class Deadlines:
    """The caps one server enforces; tests and ``hetlora serve --idle-timeout`` override them."""

    caps_s: Mapping[str, float] = field(default_factory=lambda: dict(CAPS_S))
    unary_s: float = UNARY_S
    idle_s: float = IDLE_S

    def __post_init__(self) -> None:
        bad = {m: s for m, s in {**self.caps_s, "(default)": self.unary_s, "(idle)": self.idle_s}.items() if s <= 0}
        if bad:
            raise ValueError(f"deadlines must be positive seconds; got {bad}")

    def cap(self, method: str) -> float:
        """The cap for ``method`` ("Service/Method")."""
        return self.caps_s.get(method, self.unary_s)


class DeadlineInterceptor(grpc.aio.ServerInterceptor):
    """Ends each call at its cap and each stream at its idle timeout, with DEADLINE_EXCEEDED and a reason.

    Installed innermost (after the metrics interceptor), so the metrics count these calls as DEADLINE_EXCEEDED.
    A server-streaming method is served through ``context.write`` so that a reader that stalls is bounded too.
    """

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit(".", 1)[-1]  # "/hetlora.v1.AggregatorService/AwaitStage" -> "Service/Method"
        cap, idle = self.deadlines.cap(method), self.deadlines.idle_s
        if handler.unary_unary:
            return handler._replace(unary_unary=_capped(handler.unary_unary, method, cap))
        if handler.stream_unary:
            return handler._replace(stream_unary=_capped_upload(handler.stream_unary, method, cap, idle))
        if handler.unary_stream:
            return handler._replace(unary_stream=_capped_download(handler.unary_stream, method, cap, idle))
        return handler


def _past_cap(method: str, cap_s: float) -> str:
    log.warning("%s ran past its server-side cap of %g s and was ended", method, cap_s)
    return (
        f"{method} ran past the server's {cap_s:g} s cap and was ended; retry it (each time it happens the "
        "server logs a warning naming the call)"
    )


def _capped(behaviour: Callable[..., Any], method: str, cap_s: float) -> Callable[..., Any]:
    async def bounded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        cap = asyncio.timeout(cap_s)
        try:
            async with cap:
                return await behaviour(request, context)
        except TimeoutError:
            if not cap.expired():
                raise  # the handler's own TimeoutError, not the cap
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _past_cap(method, cap_s))

    return bounded


def _capped_upload(behaviour: Callable[..., Any], method: str, cap_s: float, idle_s: float) -> Callable[..., Any]:
    async def bounded(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        cap = asyncio.timeout(cap_s)
        try:
            async with cap:
                return await behaviour(_each_within(requests, idle_s, method), context)
        except TimeoutError:
            if not cap.expired():
                raise
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _past_cap(method, cap_s))
        except errors.ServiceError as e:  # a stalled stream, where the servicer does not map errors itself
            await context.abort(e.code, e.message)

    return bounded


async def _each_within(requests: AsyncIterator[Any], idle_s: float, method: str) -> AsyncIterator[Any]:
    """``requests``, but a gap of ``idle_s`` before any chunk raises DEADLINE_EXCEEDED into the handler, whose
    buffer then goes with it."""
    iterator = aiter(requests)
    while True:
        idle = asyncio.timeout(idle_s)
        try:
            async with idle:
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if not idle.expired():
                raise
            log.warning("%s: no chunk for %g s; the stalled upload was dropped", method, idle_s)
            raise errors.not_yet(
                f"no chunk for {idle_s:g} s: the server dropped this upload; send it again from the first chunk"
            ) from None
        yield chunk


def _capped_download(behaviour: Callable[..., Any], method: str, cap_s: float, idle_s: float) -> Callable[..., Any]:
    async def bounded(request: Any, context: grpc.aio.ServicerContext) -> None:
        cap, stalled = asyncio.timeout(cap_s), False
        try:
            async with cap, contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    if not await _written_within(context, response, idle_s):
                        stalled = True
                        break
        except TimeoutError:
            if not cap.expired():
                raise
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, _past_cap(method, cap_s))
        if stalled:  # aborted outside the generator: it is closed by now, and what it held with it
            log.warning("%s: the reader took no message for %g s; the stream was dropped", method, idle_s)
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the client read nothing for {idle_s:g} s: the server dropped this stream; call again",
            )

    return bounded


async def _written_within(context: grpc.aio.ServicerContext, response: Any, idle_s: float) -> bool:
    """Send ``response``; False when the reader did not take it within ``idle_s`` (flow control held it)."""
    idle = asyncio.timeout(idle_s)
    try:
        async with idle:
            await context.write(response)
    except TimeoutError:
        if not idle.expired():
            raise
        return False
    return True
