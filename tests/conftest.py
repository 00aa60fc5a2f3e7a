"""Shared fixtures. Tests that spawn real workers carry the ``subprocess`` marker and run
after the unit tests (ordering below)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from workers.host.command import bundled_worker_command

FAKES = Path(__file__).parent / "fakes"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Unit tests first, then subprocess tests, then Dagster materializations: fast feedback.
    def rank(item: pytest.Item) -> int:
        return 2 if item.get_closest_marker("dagster") else 1 if item.get_closest_marker("subprocess") else 0

    items.sort(key=rank)


@pytest.fixture(scope="session", autouse=True)
def _reports_outside_the_repository(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Assets write trend plots under $HYBRID_REPORTS_DIR; tests (and the CLI runs they spawn,
    which inherit the environment) write them to a temporary folder, never to var/reports."""
    os.environ.setdefault("HYBRID_REPORTS_DIR", str(tmp_path_factory.mktemp("reports")))


@pytest.fixture
def worker_argv() -> list[str]:
    """The bundled worker with fault injection and a short heartbeat (0.2 s)."""
    return [*bundled_worker_command(), "--allow-fault-injection", "--heartbeat-interval", "0.2"]


def fake_worker(name: str) -> list[str]:
    return [sys.executable, str(FAKES / name)]
