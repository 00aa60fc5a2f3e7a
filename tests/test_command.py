"""Which worker runs: explicit > $HYBRID_WORKER_CMD > bundled; bad commands are named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from workers.host.command import WorkerCommandError, bundled_worker_command, resolve_worker_command


def test_precedence() -> None:
    assert resolve_worker_command(None, env={}) == bundled_worker_command()
    env = {"HYBRID_WORKER_CMD": f"{sys.executable} -m workers --heartbeat-interval 2"}
    assert resolve_worker_command(None, env=env)[-2:] == ["--heartbeat-interval", "2"]
    assert resolve_worker_command([sys.executable, "-m", "workers", "--x"], env=env)[-1] == "--x"


def test_bad_commands_are_named(tmp_path: Path) -> None:
    with pytest.raises(WorkerCommandError, match=r"\$HYBRID_WORKER_CMD: '/nope/worker' does not exist"):
        resolve_worker_command(None, env={"HYBRID_WORKER_CMD": "/nope/worker --stdio"})
    with pytest.raises(WorkerCommandError, match="not found on PATH"):
        resolve_worker_command("definitely-not-a-worker-xyz")
    script = tmp_path / "w"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(WorkerCommandError, match="not executable"):
        resolve_worker_command(str(script))
    with pytest.raises(WorkerCommandError, match="not executable"):
        resolve_worker_command(str(tmp_path))
