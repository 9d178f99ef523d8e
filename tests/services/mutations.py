"""Mutations of valid requests, for the services' fuzz loops, and the checks every answer must pass.

``mutate`` and ``mutate_stream`` start from a valid request and break it in seeded ways (bytes, fields, message
counts, chunk streams); ``fuzz`` sends them to a set of ``Target`` methods; ``check_answer`` holds every answer
to a precise status and, for bodies that do not decode, to the "could not be decoded as <type>" message.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from services.transport import MAX_MESSAGE_BYTES

F = FieldDescriptor
VARINT_TYPES = {F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_BOOL, F.TYPE_ENUM}
EXTREMES: dict[int, tuple] = {
    F.TYPE_INT32: (-1, -(2**31), 2**31 - 1),
    F.TYPE_INT64: (-1, -(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 1, 2**31, 2**32 - 1),
    F.TYPE_UINT64: (0, 1, 2**63, 2**64 - 1),
    F.TYPE_DOUBLE: (math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, -1.0),
    F.TYPE_BOOL: (True, False),
    F.TYPE_ENUM: (-1, 99, 2**31 - 1),
    F.TYPE_STRING: ("", "\x00", "é\u2603", "a.b", "x" * 70_000),
    F.TYPE_BYTES: (b"", b"\x00", bytes(range(256)), b"\xff" * 70_000),
}
BAD_WIRE = (
    b"\x07",  # wire type 7 does not exist
    b"\x0a\xff\xff\xff\xff\x0f",  # field 1, length-delimited, 4 GiB long: past the end
    b"\x80" * 11,  # a varint that never ends
    b"\x0b" * 120,  # groups nested past the parser's depth limit
    b"\x7b",  # field 15 opens a group that never closes
)
# Mutation kinds and their weights: oversized bodies (past gRPC's 4 MiB limit) cost 4 MiB each, so rarer.
BYTE_KINDS = {"flip": 3, "insert": 2, "delete": 2, "truncate": 2, "bad_wire": 2}
FIELD_KINDS = {"extreme": 4, "negative": 2, "huge_repeated": 1, "unknown_enum": 2, "bad_utf8": 1, "wrong_id": 3}
KINDS = {**BYTE_KINDS, **FIELD_KINDS, "oversized": 0.5, "no_message": 1, "two_messages": 1}
STREAM_KINDS = {"one_mutated": 4, "valid_then_garbage": 2, "garbage_first": 1, "disagree": 2, "empty": 1, "bulk": 1}
DECODE_PREFIX = "request could not be decoded as "
NEVER = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
PRECISE = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNAVAILABLE,
    }
)


@dataclass(frozen=True)
class Mutant:
    """What one fuzz call sends: ``bodies`` is the one request of a unary call or the chunks of a stream."""

    kind: str
    bodies: tuple[bytes, ...]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _pick(rng: random.Random, weights: Mapping[str, float]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def _fields(message: Message) -> list[tuple[Message, FieldDescriptor]]:
    """Every (message, field) in ``message``, nested ones included (a set sub-message or repeated element)."""
    found = []
    for field in message.DESCRIPTOR.fields:
        found.append((message, field))
        if field.type != F.TYPE_MESSAGE:
            continue
        value = getattr(message, field.name)
        for child in value if field.is_repeated else [value]:
            found.extend(_fields(child))
    return found


def _set(message: Message, field: FieldDescriptor, value: object) -> None:
    if field.is_repeated:
        target = getattr(message, field.name)
        del target[:]
        target.append(value)
    else:
        setattr(message, field.name, value)


def _mutate_bytes(kind: str, data: bytes, rng: random.Random) -> bytes:
    if kind == "flip":
        out = bytearray(data or b"\x00")
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    at = rng.randrange(len(data) + 1)
    if kind == "insert":
        return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + rng.randint(1, 16) :]
    if kind == "truncate":
        return data[: rng.randrange(len(data))] if data else b""
    return data + rng.choice(BAD_WIRE)  # bad_wire


def _mutate_fields(
    kind: str, message: Message, rng: random.Random, wrong_ids: Mapping[str, Sequence]
) -> tuple[str, bytes]:
    """``message`` (a copy) with one field pushed to an edge, and the kind that was applied: a message without a
    field of the kind asked for gets an extreme value in another field, or bad wire bytes if it has no fields."""
    fields = _fields(message)

    def pick(wanted: Callable[[Message, FieldDescriptor], bool]) -> tuple[Message, FieldDescriptor] | None:
        found = [(m, f) for m, f in fields if wanted(m, f)]
        return rng.choice(found) if found else None

    if kind == "wrong_id" and (hit := pick(lambda m, f: f.name in wrong_ids)):
        _set(*hit, rng.choice(wrong_ids[hit[1].name]))
        return kind, message.SerializeToString()
    if kind == "negative" and (hit := pick(lambda m, f: m is message and f.type in VARINT_TYPES)):
        # A negative varint on the wire, which an unsigned field reads as a huge number.
        value = _varint(2**64 - rng.choice((1, 2**31, 2**63)))
        return kind, message.SerializeToString() + _tag(hit[1].number, 0) + value
    if kind == "bad_utf8" and (hit := pick(lambda m, f: m is message and f.type == F.TYPE_STRING)):
        # The last value of a singular string field wins: make it invalid UTF-8.
        return kind, message.SerializeToString() + _tag(hit[1].number, 2) + b"\x02\xff\xfe"
    if kind == "huge_repeated" and (hit := pick(lambda m, f: f.is_repeated)):
        owner, fd = hit
        values = getattr(owner, fd.name)
        if fd.type == F.TYPE_MESSAGE:  # copies of an element that is there (or of an empty one)
            element = values[0] if len(values) else None
            for _ in range(rng.choice((100, 10_000))):
                added = values.add()
                if element is not None:
                    added.CopyFrom(element)
        else:
            values.extend([rng.choice(EXTREMES[fd.type][:3])] * rng.choice((1000, 100_000)))
        return kind, message.SerializeToString()
    if kind == "unknown_enum" and (hit := pick(lambda m, f: f.type == F.TYPE_ENUM)):
        _set(*hit, rng.choice(EXTREMES[F.TYPE_ENUM]))
        return kind, message.SerializeToString()
    if kind == "oversized":  # past gRPC's limit: in a bytes or string field, else as an unknown field
        if hit := pick(lambda m, f: f.type in (F.TYPE_BYTES, F.TYPE_STRING)):
            _set(*hit, ("x" if hit[1].type == F.TYPE_STRING else b"x") * (MAX_MESSAGE_BYTES + 1))
            return kind, message.SerializeToString()
        blob = b"x" * (MAX_MESSAGE_BYTES + 1)
        return kind, message.SerializeToString() + _tag(99, 2) + _varint(len(blob)) + blob
    if hit := pick(lambda m, f: f.type in EXTREMES):
        _set(*hit, rng.choice(EXTREMES[hit[1].type]))
        return "extreme", message.SerializeToString()
    return "bad_wire", message.SerializeToString() + rng.choice(BAD_WIRE)


def mutate(message: Message, rng: random.Random, wrong_ids: Mapping[str, Sequence] | None = None) -> Mutant:
    """One mutation of valid ``message``: bytes of its serialized form, one field set to an edge value, or the
    message sent zero times or twice.

    ``wrong_ids``: field name -> values that are well-formed but name the wrong thing (another round, a stage
    that is not open), so the mutant gets past decoding to the handler's own checks."""
    kind = _pick(rng, KINDS)
    if kind == "no_message":
        return Mutant(kind, ())
    if kind == "two_messages":
        return Mutant(kind, (message.SerializeToString(),) * 2)
    if kind in BYTE_KINDS:
        return Mutant(kind, (_mutate_bytes(kind, message.SerializeToString(), rng),))
    copy = type(message)()
    copy.CopyFrom(message)
    done, body = _mutate_fields(kind, copy, rng, wrong_ids or {})
    return Mutant(done, (body,))


def mutate_stream(chunks: Sequence[Message], rng: random.Random, wrong_ids: Mapping[str, Sequence]) -> Mutant:
    """A mutated request stream of valid ``chunks``: one chunk mutated, a valid chunk then garbage (or garbage
    first), a later chunk naming another round or stage, no chunk at all, or many large valid chunks."""
    kind = _pick(rng, STREAM_KINDS)
    bodies = [c.SerializeToString() for c in chunks]
    names = sorted(n for n in wrong_ids if n in chunks[-1].DESCRIPTOR.fields_by_name)
    if kind == "one_mutated":
        at = rng.randrange(len(chunks))
        inner = mutate(chunks[at], rng, wrong_ids)
        return Mutant(f"one_mutated/{inner.kind}", (*bodies[:at], *inner.bodies, *bodies[at + 1 :]))
    if kind == "disagree" and names:
        later = type(chunks[-1])()
        later.CopyFrom(chunks[-1])
        name = rng.choice(names)
        setattr(later, name, rng.choice(wrong_ids[name]))
        return Mutant(kind, (*bodies[:-1], later.SerializeToString()))
    if kind in ("valid_then_garbage", "disagree"):
        return Mutant("valid_then_garbage", (bodies[0], rng.randbytes(rng.randint(1, 64)), *bodies[1:]))
    if kind == "garbage_first":
        return Mutant(kind, (rng.randbytes(rng.randint(1, 64)), *bodies))
    if kind == "empty":
        return Mutant(kind, ())
    big = type(chunks[0])()
    big.CopyFrom(chunks[0])
    blob = next(f for f in big.DESCRIPTOR.fields if f.type == F.TYPE_BYTES)
    setattr(big, blob.name, b"\x00" * (256 * 1024))
    return Mutant(kind, (big.SerializeToString(),) * rng.choice((2, 8)))


def undecodable(body: bytes, request_type: type[Message]) -> bool:
    try:
        request_type.FromString(body)
    except DecodeError:
        return True
    return False


def check_answer(
    error: grpc.RpcError | None, mutant: Mutant, request_type: type[Message], allowed: set[grpc.StatusCode], unary: bool
) -> str:
    """The outcome's name (UNDECODABLE for a refusal of bytes that do not parse); fails on INTERNAL/UNKNOWN or a
    status not in ``allowed``, when a first message that does not decode is not refused as undecodable (first:
    a stream may be refused on an earlier chunk's merits), and when a call sending no message gets another answer.
    ``unary``: the method takes one request message."""
    if error is None:
        return "OK"
    code, details = error.code(), error.details() or ""
    assert code not in NEVER and code in allowed, (mutant.kind, code, details)
    if unary and not mutant.bodies:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.endswith("this call sent none"), details
    first = mutant.bodies[0] if mutant.bodies else None
    if first is not None and len(first) <= MAX_MESSAGE_BYTES and undecodable(first, request_type):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (mutant.kind, code, details)
        assert details.startswith(DECODE_PREFIX + request_type.DESCRIPTOR.full_name + ": "), details
    return "UNDECODABLE" if details.startswith(DECODE_PREFIX) else code.name


@dataclass(frozen=True)
class Target:
    """One method to fuzz: a valid request (or the chunks of one valid upload), sent over ``channel`` as the
    caller that gets furthest into the handler. ``ok``: whether a mutant may succeed (a valid request whose effect
    the test tolerates); ``timeout``: short for long polls, whose mutated wait ends at the client's deadline."""

    path: str
    shape: str  # "unary", "client_stream" or "server_stream"
    chunks: tuple[Message, ...]
    channel: grpc.Channel
    allowed: frozenset[grpc.StatusCode]
    wrong_ids: Mapping[str, Sequence] = dataclasses.field(default_factory=dict)
    ok: bool = False
    timeout: float = 10.0

    @property
    def method(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def send(target: Target, bodies: Sequence[bytes]) -> None:
    """``bodies`` as raw bytes in the method's shape (a request stream when a unary mutant is not one message)."""
    ch, path, timeout = target.channel, target.path, target.timeout
    if target.shape == "client_stream":
        ch.stream_unary(path)(iter(bodies), timeout=timeout)
    elif len(bodies) == 1:
        if target.shape == "unary":
            ch.unary_unary(path)(bodies[0], timeout=timeout)
        else:
            list(ch.unary_stream(path)(bodies[0], timeout=timeout))
    elif target.shape == "unary":
        ch.stream_unary(path)(iter(bodies), timeout=timeout)
    else:
        list(ch.stream_stream(path)(iter(bodies), timeout=timeout))


def fuzz(targets: Sequence[Target], rng: random.Random, calls: int) -> dict[str, int]:
    """``calls`` mutants, round robin over ``targets``; counts "Method:kind:outcome" (kinds without the inner
    mutation of a stream's chunk). Every answer is checked by ``check_answer``."""
    seen: dict[str, int] = {}
    for i in range(calls):
        target = targets[i % len(targets)]
        request_type = type(target.chunks[0])
        if target.shape == "client_stream":
            mutant = mutate_stream(target.chunks, rng, target.wrong_ids)
        else:
            mutant = mutate(target.chunks[0], rng, target.wrong_ids)
        try:
            send(target, mutant.bodies)
            error = None
        except grpc.RpcError as e:
            error = e
        outcome = check_answer(error, mutant, request_type, set(target.allowed), target.shape != "client_stream")
        assert outcome != "OK" or target.ok, (target.method, mutant.kind, "a mutant succeeded")
        key = f"{target.method}:{mutant.kind.split('/')[0]}:{outcome}"
        seen[key] = seen.get(key, 0) + 1
    return seen


def assert_reached_handlers(seen: Mapping[str, int], targets: Sequence[Target]) -> None:
    """Each method both refused undecodable mutants and answered decodable ones on their merits, and every
    mutation kind was drawn: the loop exercised the handlers, not only the parser."""
    for target in targets:
        outcomes = {key.split(":")[2] for key in seen if key.startswith(target.method + ":")}
        assert "UNDECODABLE" in outcomes and outcomes - {"UNDECODABLE"}, (target.method, outcomes)
    drawn = {key.split(":")[1] for key in seen}
    expected = set(KINDS) - {"oversized"}  # drawn about once in 60 calls; the fuzz loops assert it themselves
    if not any(f.type == F.TYPE_ENUM for t in targets for _, f in _fields(t.chunks[0])):
        expected.discard("unknown_enum")  # the enrollment API has no enum fields
    if any(t.shape == "client_stream" for t in targets):
        expected |= set(STREAM_KINDS)
    assert expected <= drawn, sorted(expected - drawn)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing a client sent made a service log a traceback, and every refusal of its bytes is one line."""
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not bad, [r.getMessage()[:300] for r in bad]
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a request")]
    assert all("\n" not in m and len(m) < 1000 for m in refusals), [m[:300] for m in refusals]


# --- the transport layer on stand-in servicers ------------------------------------------------------------------
