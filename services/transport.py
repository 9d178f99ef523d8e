"""gRPC servers and channels with mTLS from the deployment's PKI directory (plaintext only with --insecure).

PKI directory layout (``hetlora ca init``): ``ca.crt`` (+ ``ca.key``, needed only by enrollment),
``service.crt``/``service.key`` for every service, ``admin.crt``/``admin.key`` for the operator's tools.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from services import errors
from services.rpc_metrics import MetricsInterceptor

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # gRPC's default; large tensors are streamed in chunks below it
log = logging.getLogger("hetlora.services")


@dataclass(frozen=True)
class TlsFiles:
    """A party's certificate chain and key plus the CA it trusts."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def load(cls, pki: Path, name: str) -> TlsFiles:
        missing = [p for p in (pki / "ca.crt", pki / f"{name}.crt", pki / f"{name}.key") if not p.exists()]
        if missing:
            raise FileNotFoundError(f"missing {', '.join(map(str, missing))}: run 'hetlora ca init --dir {pki}'")
        return cls(
            (pki / "ca.crt").read_bytes(), (pki / f"{name}.crt").read_bytes(), (pki / f"{name}.key").read_bytes()
        )


def new_server(
    workers: int = 8,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_send_bytes: int | None = None,
    service: str | None = None,
) -> grpc.Server:
    """A thread-pool server; with ``service`` every call is counted and timed under that name (Prometheus)."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_send_bytes or max_message_bytes),
    ]
    interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(service)] if service else []
    return grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options, interceptors=interceptors)


def bind(server: grpc.Server, address: str, tls: TlsFiles | None, require_client_cert: bool = True) -> int:
    """Listen on ``address`` (port 0 picks one) and return the port; ``tls=None`` means plaintext."""
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        creds = grpc.ssl_server_credentials(
            [(tls.key_pem, tls.cert_pem)],
            root_certificates=tls.ca_pem if require_client_cert else None,
            require_client_auth=require_client_cert,
        )
        port = server.add_secure_port(address, creds)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    return port


def channel(
    target: str,
    ca_pem: bytes | None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> grpc.Channel:
    """A channel that verifies the server against the CA and, given a key pair, presents a client cert.

    Reconnect backoff is capped at 5 s (gRPC's default cap is 120 s), so devices find a restarted service soon.
    """
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    if ca_pem is None:
        return grpc.insecure_channel(target, options=options)
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
    return grpc.secure_channel(target, creds, options=options)


def add_servicer(server: grpc.Server, service: ServiceDescriptor, servicer: object) -> None:
    """Register ``servicer`` for ``service`` so that no request bytes are ever answered INTERNAL or UNIMPLEMENTED.

    The generated ``add_*_to_server`` lets gRPC parse requests and answer INTERNAL when bytes are not the
    message; here each method receives raw bytes and parses them itself, naming the expected message type.
    Unary, client-streaming and server-streaming methods (the shapes this API uses).
    """
    handlers = raw_body_handlers(service, servicer, _parsing, _parsing_stream, _parsing)
    server.add_generic_rpc_handlers((_FirstRequest(handlers),))


Wrap = Callable[[Any, type[Message]], Callable[..., Any]]


def raw_body_handlers(
    service: ServiceDescriptor, servicer: object, unary: Wrap, client_stream: Wrap, server_stream: Wrap
) -> grpc.GenericRpcHandler:
    """``service``'s methods taking raw request bytes, each wrapped by the parser for its shape (sync or aio)."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        serialize = message_factory.GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.server_streaming and method.client_streaming:
            raise ValueError(f"{service.full_name}.{method.name} streams both ways; not supported here")
        if method.server_streaming:
            make, wrap = grpc.unary_stream_rpc_method_handler, server_stream
        elif method.client_streaming:
            make, wrap = grpc.stream_unary_rpc_method_handler, client_stream
        else:
            make, wrap = grpc.unary_unary_rpc_method_handler, unary
        handlers[method.name] = make(
            wrap(behaviour, request_type), request_deserializer=None, response_serializer=serialize
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def decode(body: bytes, request_type: type[Message], peer: str, index: int | None = None) -> Message:
    """``body`` parsed as ``request_type``; bytes that are not that message are the client's fault (or its protos
    differ), so a ServiceError INVALID_ARGUMENT naming the type, and one line in the log, never a traceback.
    ``index``: the message's place in a request stream. Shared by the thread-pool and ``grpc.aio`` servers."""
    try:
        return request_type.FromString(body)
    except (DecodeError, ValueError, RecursionError) as e:
        reason = str(e).rsplit("': ", 1)[-1] or type(e).__name__  # upb: "Error parsing message with type 'T': …"
        where = "" if index is None else f" (message {index + 1} of the stream)"
        error = errors.undecodable(
            request_type.DESCRIPTOR.full_name,
            f"{reason}{where}; send bytes serialized from that message, built from the server's hetlora.v1 protos",
        )
    log.warning("refused a request from %s: %s", peer or "an unknown peer", error.message)
    raise error


def _parsing(method: Callable[[Any, grpc.ServicerContext], Any], request_type: type[Message]) -> Callable[..., Any]:
    def handle(body: bytes, context: grpc.ServicerContext) -> Any:
        try:
            request = decode(body, request_type, context.peer())
        except errors.ServiceError as e:
            _abort(context, e)
        return method(request, context)

    return handle


def _parsing_stream(
    method: Callable[[Any, grpc.ServicerContext], Any], request_type: type[Message]
) -> Callable[..., Any]:
    """Chunks are parsed as the servicer takes them, so a bad one raises a ServiceError inside its loop: its
    ``grpc_errors`` maps that like its own errors (an abort there would be caught and re-answered INTERNAL)."""

    def handle(bodies: Iterator[bytes], context: grpc.ServicerContext) -> Any:
        peer = context.peer()
        try:
            return method((decode(b, request_type, peer, i) for i, b in enumerate(bodies)), context)
        except errors.ServiceError as e:  # a servicer that does not map its errors itself
            _abort(context, e)

    return handle


class _FirstRequest(grpc.GenericRpcHandler):
    """Serves each unary method through a request stream, so a call that sends no message is INVALID_ARGUMENT
    naming the method (gRPC's own answer is UNIMPLEMENTED, which reads as a missing method).

    Only the first message is read: waiting for the end of the stream to refuse a second one would hold a
    worker thread for as long as the client kept the stream open. (``grpc.aio`` servers can afford that wait:
    ``services.aio_transport.SingleRequest``.)
    """

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        unary, method = handler.unary_unary, handler_call_details.method

        def first(bodies: Iterator[bytes], context: grpc.ServicerContext) -> Any:
            body = next(bodies, None)
            if body is None:
                error = errors.request_count(method, "none")
                log.warning("refused a request from %s: %s", context.peer() or "an unknown peer", error.message)
                _abort(context, error)
            return unary(body, context)

        return grpc.stream_unary_rpc_method_handler(first, None, handler.response_serializer)


def _abort(context: grpc.ServicerContext, error: errors.ServiceError) -> NoReturn:
    context.abort(error.code, error.message)
    raise AssertionError("unreachable: context.abort raises")
