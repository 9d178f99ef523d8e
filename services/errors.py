"""One catalog of the errors services put on the wire: a gRPC status and a message a person can act on.

Handlers raise :class:`ServiceError` built by the functions below; servicers turn it into the status. Anything
else is a bug: it is logged with a reference id and the caller sees only INTERNAL with that id, so internals
never leak to the wire.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import grpc

log = logging.getLogger("hetlora.services")


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {why}")


def unauthenticated(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, why)


def denied(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, why)


def not_found(what: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, what)


def precondition(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, why)


def aborted(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, why)


def not_yet(why: str) -> ServiceError:
    """The awaited thing is not there yet: the caller should ask again (a long poll ran out)."""
    return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, why)


def unavailable(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, why)


def already(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, why)


def exhausted(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, why)


# The fixed wording of errors that several services raise.
TOKEN_UNKNOWN = "enrollment token not recognised: check it was copied whole, or ask the operator for a new one"
TOKEN_EXPIRED = "enrollment token expired: ask the operator for a new one (hetlora admin issue-token)"
TOKEN_USED = "enrollment token already used: each token enrolls once; ask the operator for a new one"
NO_CERTIFICATE = "no client certificate: connect with mTLS using the certificate from enrollment"
NOT_ADMIN = "this call needs an admin certificate (created by 'hetlora ca init')"


def device_revoked(device_id: str) -> ServiceError:
    return denied(f"device {device_id!r} is revoked; the operator must issue a new enrollment token")


def stale_certificate(device_id: str) -> ServiceError:
    return unauthenticated(f"certificate of {device_id!r} was replaced by a later enrollment; use the newest one")


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Servicer decorator: ServiceError → its status; any other exception → INTERNAL with a log reference."""

    @wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except ServiceError as e:
            _abort(context, e.code, e.message)
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("unhandled error in %s (ref %s)", method.__name__, ref)
            _abort(context, grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has details")

    return wrapper  # type: ignore[return-value]


def aio_grpc_errors(method: F) -> F:
    """``grpc_errors`` for ``grpc.aio`` servicer coroutines."""

    @wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except ServiceError as e:
            await context.abort(e.code, e.message)
        except grpc.aio.AbortError:
            raise  # already answered (an undecodable chunk inside a stream)
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("unhandled error in %s (ref %s)", method.__name__, ref)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has details")

    return wrapper  # type: ignore[return-value]


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


# The orchestrator's refusal of a device whose base model is not the job's starts with this; the device agent
# recognises it as a configuration error to stop on, not a transient one to retry.
BASE_MODEL_MISMATCH = "base model mismatch"


def undecodable(message_type: str, why: str) -> ServiceError:
    """Request bytes that are not ``message_type``'s wire format. They are the client's (a bug, other protos, a
    truncated write), never the server's, so INVALID_ARGUMENT naming the type, where gRPC itself says INTERNAL."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"request could not be decoded as {message_type}: {why}")


def request_count(method: str, sent: str) -> ServiceError:
    """A call to a method that takes one request message sent none or several. Left to gRPC, none is
    UNIMPLEMENTED on a thread-pool server and never answered at all on a ``grpc.aio`` one."""
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{method} takes exactly one request message; this call sent {sent}"
    )


def aio_stream_errors(method: F) -> F:
    """``aio_grpc_errors`` for ``grpc.aio`` servicer async generators (server-streaming methods): without it an
    exception escapes to gRPC, which answers UNKNOWN and logs a traceback, even for a client's bad input."""

    @wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for response in method(self, request, context):
                yield response
        except ServiceError as e:
            await context.abort(e.code, e.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("unhandled error in %s (ref %s)", method.__name__, ref)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has details")

    return wrapper  # type: ignore[return-value]
