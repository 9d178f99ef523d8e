"""The operator's path end to end with real processes: ca init, serve, issue a token, enroll, list, revoke."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.services.processes import hetlora, start_service

pytestmark = pytest.mark.timeout(120)


def test_operator_enrolls_a_device_with_the_cli(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert hetlora("ca", "init", "--dir", str(pki)).returncode == 0
    assert stat.S_IMODE(os.stat(pki / "ca.key").st_mode) == 0o600
    assert hetlora("ca", "init", "--dir", str(pki)).returncode != 0  # never overwrites a CA
    server = start_service(
        ["serve", "enrollment", "--pki", str(pki), "--db", str(tmp_path / "reg.db"), "--port", "0", "--admin-port", "0"]
    )
    try:
        admin = ["admin", "--pki", str(pki), "--target", f"127.0.0.1:{server.ready['admin_port']}"]
        issued = hetlora(*admin, "issue-token", "phone-7")
        assert issued.returncode == 0, issued.stderr
        token = issued.stdout.strip()
        device_dir = tmp_path / "device"
        enroll = [
            "device", "enroll", "--token", token, "--target", f"127.0.0.1:{server.ready['enroll_port']}",
            "--ca", str(pki / "ca.crt"), "--memory-mb", "1520", "--gflops", "500", "--dir", str(device_dir),
        ]  # fmt: skip
        done = hetlora(*enroll)
        assert done.returncode == 0, done.stderr
        assert json.loads((device_dir / "enrollment.json").read_text()) == {"device_id": "phone-7", "rank": 10}
        assert stat.S_IMODE(os.stat(device_dir / "device.key").st_mode) == 0o600
        again = hetlora(*enroll)
        assert again.returncode == 1 and "PERMISSION_DENIED" in again.stderr and "already used" in again.stderr
        listed = hetlora(*admin, "devices")
        assert "phone-7" in listed.stdout and "active" in listed.stdout
        assert hetlora(*admin, "revoke", "phone-7").returncode == 0
        assert "revoked" in hetlora(*admin, "devices").stdout
    finally:
        server.stop()
