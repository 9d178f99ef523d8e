"""Typed errors: callers (the aggregator service) map each class to one transport status.

Every handler validates a message completely before it touches state, so any of these errors leaves the
state machine exactly as it was: the caller may drop the offending message and carry on.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(SecAggError, ValueError):
    """Invalid round parameters (threshold, degree, layout, bounds); raised before any message is sent."""


class MalformedMessageError(SecAggError):
    """Bytes that do not parse as the expected message: truncated, trailing data, bad sizes or tags."""


class WrongStageError(SecAggError):
    """A message or call that belongs to another protocol stage than the current one."""


class ReplayError(SecAggError):
    """A message bound to another round or session (old round id, old session id, duplicate sender)."""


class VerificationError(SecAggError):
    """A signature, AEAD tag, share or key that fails its cryptographic check."""


class ProtocolViolationError(SecAggError):
    """A well-formed message whose content breaks the protocol (unknown peer, wrong key set, bad length)."""


class AbortedError(SecAggError):
    """The round cannot complete (fewer than t clients left, a secret without t shares); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SumOutOfRangeError(SecAggError):
    """A decoded bucket sum that no honest cohort can produce: some client did not encode within the bounds."""

    def __init__(self, reason: str, buckets: tuple[int, ...]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.buckets = buckets
