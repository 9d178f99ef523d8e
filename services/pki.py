"""The deployment's certificate authority: every party's identity is a certificate it signed.

Devices get client certificates at enrollment (from a CSR, so their private key never leaves them); services
and the operator's admin tool get theirs from ``hetlora ca init``. A certificate's organizational unit says
the role (device, service, admin) and its common name the identity; services read both from the verified
mTLS peer, never from a request field. EC P-256 keys: small, fast and supported by gRPC's TLS stack.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = ("device", "service", "admin")
DEFAULT_DAYS = 365


@dataclass(frozen=True)
class Identity:
    """Who a verified certificate names."""

    common_name: str
    role: str
    serial: str  # hex


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, name: str = "hetlora deployment CA", days: int = 3650) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / 'ca.key'} is not an EC private key")
        return cls(cert, key)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_private(directory / "ca.key", private_key_pem(self.key))
        (directory / "ca.crt").write_bytes(self.certificate_pem)

    def sign(
        self,
        public_key: ec.EllipticCurvePublicKey,
        common_name: str,
        role: str,
        hosts: tuple[str, ...] = (),
        days: int = DEFAULT_DAYS,
    ) -> x509.Certificate:
        """A leaf certificate for ``public_key``; services get server and client auth, others client auth."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        now = _now()
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if role == "service":
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign_csr(self, csr_pem: bytes, common_name: str, role: str = "device") -> x509.Certificate:
        """Sign a device's CSR under the name the server chose (the CSR's own subject is ignored)."""
        csr = x509.load_pem_x509_csr(csr_pem)
        try:
            valid = csr.is_signature_valid
        except UnsupportedAlgorithm as e:  # a key type or curve this build lacks: the device's bytes, not ours
            raise ValueError(f"the CSR names a key type this CA does not sign ({e})") from None
        if not valid:
            raise ValueError("the CSR's signature does not verify: it was not made with the key it carries")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            found = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
            raise ValueError(f"the CSR must carry a P-256 (secp256r1) EC public key, not {found}")
        return self.sign(key, common_name, role)

    def issue(self, common_name: str, role: str, hosts: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
        """A fresh key and certificate (PEM) for a service or admin, created where the CA lives."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign(key.public_key(), common_name, role, hosts)
        return cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


def new_key_and_csr() -> tuple[bytes, bytes]:
    """What a device creates before enrolling: a private key (kept) and a CSR for it (sent)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hetlora device")]))
        .sign(key, hashes.SHA256())
    )
    return private_key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def identity_of(certificate_pem: bytes) -> Identity:
    """Role, name and serial of a certificate the TLS layer has already verified against the CA."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    subject = cert.subject
    names = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return Identity(
        common_name=str(names[0].value) if names else "",
        role=str(units[0].value) if units else "",
        serial=format(cert.serial_number, "x"),
    )


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only (created 0600, never world-readable for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_pki(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> None:
    """A new deployment: CA, one service certificate for ``hosts``, and the operator's admin certificate."""
    if (directory / "ca.key").exists():
        raise FileExistsError(f"{directory} already holds a CA; refusing to replace it (delete it first)")
    ca = CertificateAuthority.create()
    ca.save(directory)
    for name, role, names in (("service", "service", hosts), ("admin", "admin", ())):
        cert, key = ca.issue(name, role, names)
        write_private(directory / f"{name}.key", key)
        (directory / f"{name}.crt").write_bytes(cert)
