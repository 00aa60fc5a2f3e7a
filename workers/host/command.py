"""Which worker to run: a setting, so the pipeline can validate any worker that speaks v1.

Precedence: an explicit command (a config field) > ``HYBRID_WORKER_CMD`` > the bundled
Python worker. The environment is read when a command is resolved, never at import.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Union

ENV_WORKER_CMD = "HYBRID_WORKER_CMD"

CommandLike = Union[str, Sequence[str], None]


class WorkerCommandError(ValueError):
    """The worker command is empty, missing or not executable."""


def bundled_worker_command() -> list[str]:
    return [sys.executable, "-m", "workers"]


def parse_command(command: CommandLike) -> list[str]:
    if command is None:
        raise WorkerCommandError("no worker command given")
    argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not argv or not argv[0].strip():
        raise WorkerCommandError("the worker command is empty")
    return argv


def resolve_worker_command(explicit: CommandLike = None, env: Union[Mapping[str, str], None] = None) -> list[str]:
    """The argv to spawn, checked: the program exists and is executable."""
    environ = os.environ if env is None else env
    if explicit:
        argv, origin = parse_command(explicit), "the configured worker command"
    elif environ.get(ENV_WORKER_CMD, "").strip():
        argv, origin = parse_command(environ[ENV_WORKER_CMD]), f"${ENV_WORKER_CMD}"
    else:
        return bundled_worker_command()
    check_executable(argv, origin)
    return argv


def check_executable(argv: Sequence[str], origin: str = "the worker command") -> None:
    program = argv[0]
    if os.sep in program or (os.altsep and os.altsep in program):
        if not os.path.exists(program):
            raise WorkerCommandError(f"{origin}: {program!r} does not exist")
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise WorkerCommandError(f"{origin}: {program!r} is not executable")
    elif shutil.which(program) is None:
        raise WorkerCommandError(f"{origin}: {program!r} was not found on PATH")
