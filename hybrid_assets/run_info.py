"""The context every result carries: which run, build, testbed, profile and worker."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Union

from hybrid_assets.builds import BuildInfo, default_run_key
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
    # Re-running with the same key replaces earlier results instead of adding to them.
    key: Union[str, None] = None

    @property
    def run_key(self) -> str:
        return self.key or default_run_key(self.build.build_id, self.testbed.testbed_id, self.profile)
