"""Who is calling: read from the verified mTLS peer certificate, never from a request field."""

from __future__ import annotations

import grpc

from services import errors
from services.pki import Identity, identity_of
from services.registry import DeviceRegistry


def peer_identity(context: grpc.ServicerContext | grpc.aio.ServicerContext) -> Identity:
    """The caller's certificate identity; UNAUTHENTICATED without one (TLS has already checked the CA)."""
    pems: list[bytes] = list(context.auth_context().get("x509_pem_cert", []))  # type: ignore[arg-type]
    if not pems:
        raise errors.unauthenticated(errors.NO_CERTIFICATE)
    return identity_of(pems[0])


def require_admin(identity: Identity) -> None:
    if identity.role != "admin":
        raise errors.denied(errors.NOT_ADMIN)


def require_device(identity: Identity, registry: DeviceRegistry) -> str:
    """The enrolled, unrevoked device this exact certificate belongs to."""
    if identity.role != "device":
        raise errors.denied(f"this call is for enrolled devices; the caller's certificate is a {identity.role!r} one")
    record = registry.get(identity.common_name)
    if record is None:
        raise errors.unauthenticated(f"certificate names {identity.common_name!r}, which is not enrolled here")
    if record.revoked:
        raise errors.device_revoked(record.device_id)
    if record.serial != identity.serial:
        raise errors.stale_certificate(record.device_id)
    return record.device_id
