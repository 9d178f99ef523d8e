"""secure_agg: dropout-robust SecAgg+ over rank-bucketed, fixed-point LoRA updates.

A pure library (standard library, numpy, cryptography): transport, identity and metrics are injected. See
docs/secure_agg.md for the protocol, the threat model and measured costs.
"""

from __future__ import annotations

from secure_agg.bounds import SumViolation, check_sums, sum_violations
from secure_agg.buckets import (
    BucketLayout,
    BucketOutcome,
    BucketStatus,
    BucketSum,
    bucket_outcomes,
    decode_sum,
    encode_weighted,
    level_for_rank,
)
from secure_agg.client import ClientState, SecAggClient
from secure_agg.config import RoundConfig, Stage, session_id
from secure_agg.encoding import FixedPointCodec
from secure_agg.errors import (
    AbortedError,
    ConfigError,
    MalformedMessageError,
    ProtocolViolationError,
    ReplayError,
    SecAggError,
    SumOutOfRangeError,
    VerificationError,
    WrongStageError,
)
from secure_agg.graph import HararyGraph
from secure_agg.identity import Ed25519Directory, Ed25519Signer, Signer, Verifier
from secure_agg.listener import NullListener, StageListener
from secure_agg.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    ShareKeys,
    ShareRelay,
    UnmaskRequest,
    UnmaskResponse,
)
from secure_agg.params import (
    AdversaryClass,
    GraphParameters,
    SecAggRequirements,
    choose_parameters,
    harary_parameters,
)
from secure_agg.persist import dumps, loads
from secure_agg.server import AggregateResult, SecAggServer, ServerState
from secure_agg.simulate import ClientInput, RoundReport, simulate_round

__all__ = [
    "AbortedError",
    "AdversaryClass",
    "AdvertiseKeys",
    "AggregateResult",
    "BucketLayout",
    "BucketOutcome",
    "BucketStatus",
    "BucketSum",
    "ClientInput",
    "ClientState",
    "ConfigError",
    "ConsistencyRequest",
    "ConsistencySignature",
    "Ed25519Directory",
    "Ed25519Signer",
    "FixedPointCodec",
    "GraphParameters",
    "HararyGraph",
    "KeyDirectory",
    "MalformedMessageError",
    "MaskedInput",
    "NullListener",
    "ProtocolViolationError",
    "ReplayError",
    "RoundConfig",
    "RoundReport",
    "SecAggClient",
    "SecAggError",
    "SecAggRequirements",
    "SecAggServer",
    "ServerState",
    "ShareKeys",
    "ShareRelay",
    "Signer",
    "Stage",
    "StageListener",
    "SumOutOfRangeError",
    "SumViolation",
    "UnmaskRequest",
    "UnmaskResponse",
    "VerificationError",
    "Verifier",
    "WrongStageError",
    "bucket_outcomes",
    "check_sums",
    "choose_parameters",
    "decode_sum",
    "dumps",
    "encode_weighted",
    "harary_parameters",
    "level_for_rank",
    "loads",
    "session_id",
    "simulate_round",
    "sum_violations",
]
