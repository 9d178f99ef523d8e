"""Device registry and one-time enrollment tokens, in an embedded SQLite file (or ``:memory:`` in tests).

Tokens are ``<id>.<secret>``; only SHA-256 of the secret is stored and it is compared in constant time.
Redeeming a token and recording the device's new certificate happen in one transaction, so a crash leaves
either the old enrollment or the new one, and a token can never enroll twice (two racing requests: one wins).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services import errors
from trainer.ranks import DeviceProfile

DEVICE_ID = re.compile(r"^[a-z0-9_-]{1,64}$")
_DUMMY_DIGEST = hashlib.sha256(b"no such token").digest()
# The longest a registry call waits for the lock, and then for SQLite's file lock: every call is bounded
# (at most twice this), so an enrollment or admin call never holds its worker for longer (docs/services.md).
BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    rank INTEGER NOT NULL DEFAULT 0,
    memory_mb REAL NOT NULL DEFAULT 0,
    gflops REAL NOT NULL DEFAULT 0,
    serial TEXT NOT NULL DEFAULT '',
    revoked INTEGER NOT NULL DEFAULT 0,
    enrolled_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);
"""


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    rank: int
    profile: DeviceProfile | None
    serial: str
    revoked: bool
    enrolled_at: int


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.fullmatch(device_id):
        raise errors.invalid("device_id", "use 1-64 lowercase letters, digits, '-' or '_'")
    return device_id


class DeviceRegistry:
    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()  # one writer at a time; SQLite serialises files, this serialises threads
        with self._locked():
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock, waited for at most ``BUSY_TIMEOUT_S``; a busy lock or file is UNAVAILABLE (retry), not a hang."""
        if not self._lock.acquire(timeout=BUSY_TIMEOUT_S):
            raise _busy()
        try:
            yield
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e):
                raise
            raise _busy() from None
        finally:
            self._lock.release()

    def issue_token(self, device_id: str, ttl_s: int, now: int) -> tuple[str, int]:
        """A fresh one-time token bound to ``device_id`` (a new device, or one re-enrolling)."""
        check_device_id(device_id)
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(24)
        expires = now + ttl_s
        with self._locked():
            self._db.execute(
                "INSERT INTO tokens (token_id, device_id, secret_sha256, expires_at) VALUES (?, ?, ?, ?)",
                (token_id, device_id, hashlib.sha256(secret.encode()).digest(), expires),
            )
        return f"{token_id}.{secret}", expires

    def token_device(self, token: str, now: int) -> str:
        """The device a valid, unused, unexpired token names; raises the catalog's error otherwise."""
        token_id, _, secret = token.partition(".")
        with self._locked():
            row = self._db.execute(
                "SELECT device_id, secret_sha256, expires_at, used_at FROM tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
        digest = hashlib.sha256(secret.encode()).digest()
        # Compare even for unknown ids so timing does not tell which ids exist.
        matches = hmac.compare_digest(digest, row[1] if row else _DUMMY_DIGEST)
        if row is None or not matches:
            raise errors.unauthenticated(errors.TOKEN_UNKNOWN)
        device_id, _, expires_at, used_at = row
        if used_at is not None:
            raise errors.denied(errors.TOKEN_USED)
        if now >= expires_at:
            raise errors.unauthenticated(errors.TOKEN_EXPIRED)
        return str(device_id)

    def complete_enrollment(
        self, token: str, device_id: str, serial: str, profile: DeviceProfile, rank: int, now: int
    ) -> None:
        """Spend the token and record the device's certificate, atomically."""
        token_id = token.partition(".")[0]
        with self._locked():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                spent = self._db.execute(
                    "UPDATE tokens SET used_at = ? WHERE token_id = ? AND used_at IS NULL", (now, token_id)
                ).rowcount
                if spent != 1:
                    raise errors.denied(errors.TOKEN_USED)
                self._db.execute(
                    "INSERT INTO devices (device_id, rank, memory_mb, gflops, serial, revoked, enrolled_at) "
                    "VALUES (?, ?, ?, ?, ?, 0, ?) ON CONFLICT(device_id) DO UPDATE SET rank = excluded.rank, "
                    "memory_mb = excluded.memory_mb, gflops = excluded.gflops, serial = excluded.serial, "
                    "revoked = 0, enrolled_at = excluded.enrolled_at",
                    (device_id, rank, profile.memory_mb, profile.gflops, serial, now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def revoked_devices(self) -> frozenset[str]:
        """Every revoked device id, in one read (the orchestrator filters each cohort by it)."""
        with self._locked():
            rows = self._db.execute("SELECT device_id FROM devices WHERE revoked != 0").fetchall()
        return frozenset(r[0] for r in rows)

    def revoke(self, device_id: str, now: int) -> None:
        """Refuse the device's certificate from now on and void its outstanding tokens."""
        check_device_id(device_id)
        with self._locked():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                found = self._db.execute("UPDATE devices SET revoked = 1 WHERE device_id = ?", (device_id,)).rowcount
                voided = self._db.execute(
                    "UPDATE tokens SET used_at = ? WHERE device_id = ? AND used_at IS NULL", (now, device_id)
                ).rowcount
                if not found and not voided:
                    raise errors.not_found(f"no device or pending invitation named {device_id!r}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get(self, device_id: str) -> DeviceRecord | None:
        with self._locked():
            row = self._db.execute(
                "SELECT device_id, rank, memory_mb, gflops, serial, revoked, enrolled_at FROM devices "
                "WHERE device_id = ?",
                (device_id,),
            ).fetchone()
        return _record(row) if row else None

    def count_by_state(self, now: int) -> dict[str, int]:
        """Devices by state (``active``, ``revoked``) and unspent invitations (``invited``), for monitoring."""
        with self._locked():
            active, revoked = self._db.execute(
                "SELECT COALESCE(SUM(revoked = 0), 0), COALESCE(SUM(revoked != 0), 0) FROM devices"
            ).fetchone()
            (invited,) = self._db.execute(
                "SELECT COUNT(*) FROM tokens WHERE used_at IS NULL AND expires_at > ?", (now,)
            ).fetchone()
        return {"active": int(active), "revoked": int(revoked), "invited": int(invited)}

    def devices(self) -> list[DeviceRecord]:
        with self._locked():
            rows = self._db.execute(
                "SELECT device_id, rank, memory_mb, gflops, serial, revoked, enrolled_at FROM devices "
                "ORDER BY device_id"
            ).fetchall()
        return [_record(r) for r in rows]


def _busy() -> errors.ServiceError:
    return errors.unavailable(f"the device registry stayed busy for {BUSY_TIMEOUT_S:g} s; retry shortly")


def _record(row: tuple) -> DeviceRecord:
    device_id, rank, memory_mb, gflops, serial, revoked, enrolled_at = row
    profile = DeviceProfile(memory_mb, gflops) if memory_mb > 0 and gflops > 0 else None
    return DeviceRecord(device_id, int(rank), profile, serial, bool(revoked), int(enrolled_at))
