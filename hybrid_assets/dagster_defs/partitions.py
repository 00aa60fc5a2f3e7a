"""Builds are partitions; a testbed is a concurrency pool.

Every build under test is a dynamic partition of every case asset, so the UI shows each case's
history per build and a build can be (re-)run alone. Each case asset also belongs to its
testbed's concurrency pool: with the pool's limit at 1 (the default written into
$DAGSTER_HOME/dagster.yaml by `make setup`), no two cases ever measure on one testbed at once,
whatever the executor and however many runs are in flight.
"""

from __future__ import annotations

import os
import re

from dagster import DagsterInstance, DynamicPartitionsDefinition

BUILDS_PARTITION = "builds"
BUILD_PARTITIONS = DynamicPartitionsDefinition(name=BUILDS_PARTITION)

ENV_TESTBED_POOL = "HYBRID_TESTBED_POOL"
DEFAULT_TESTBED = "local"
_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def testbed_pool() -> str:
    """This code location's testbed pool, read when the definitions load: one code location
    per testbed machine, each with its own $HYBRID_TESTBED_POOL (e.g. gpu-a100-01)."""
    name = os.environ.get(ENV_TESTBED_POOL) or DEFAULT_TESTBED
    if not _POOL_NAME.match(name):
        raise ValueError(f"${ENV_TESTBED_POOL}={name!r}: a testbed pool name is letters, digits, '.', '_' "
                         "or '-' (at most 63 characters)")
    return f"testbed-{name}"


def ensure_build_partition(instance: DagsterInstance, build_id: str) -> bool:
    """Add the build's partition if it is new; True if it was added."""
    if instance.has_dynamic_partition(BUILDS_PARTITION, build_id):
        return False
    instance.add_dynamic_partitions(BUILDS_PARTITION, [build_id])
    return True
