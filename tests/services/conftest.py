from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.pki import init_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway deployment PKI (CA, service and admin certificates) shared by the service tests."""
    path = tmp_path_factory.mktemp("pki")
    init_pki(path)
    return path


@pytest.fixture
def enrollment(pki: Path, tmp_path: Path) -> Iterator:
    from services.enrollment.handler import EnrollmentPolicy
    from services.enrollment.server import start

    running = start(pki, tmp_path / "registry.db", "127.0.0.1", 0, 0, EnrollmentPolicy())
    yield running
    running.stop(None)


@pytest.fixture
def aggregator(pki: Path) -> Iterator:
    """A real aggregator (grpc.aio, mTLS) on a free loopback port."""
    from services.aggregator.server import start

    running = start(pki, "127.0.0.1", 0)
    yield running
    running.stop(None)
