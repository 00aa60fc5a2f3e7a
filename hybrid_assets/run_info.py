"""The context every result carries: which run, build, testbed, profile and worker."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Union

from hybrid_assets.builds import BuildInfo
from hybrid_assets.testbed import Testbed


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    build: BuildInfo
    testbed: Testbed
    profile: str
    worker_cmd: list[str]
    started_at: dt.datetime
    dagster_run_id: Union[str, None] = None
