"""The DuckDB metrics store and its analysts' views."""

from hybrid_assets.store.schema import VIEW_NAMES
from hybrid_assets.store.store import (
    DEFAULT_DUCKDB_PATH,
    ENV_DUCKDB_PATH,
    BuildConflictError,
    MetricsStore,
    UnknownBuildError,
    WriteReceipt,
    case_payload,
    default_store_path,
)

__all__ = [
    "DEFAULT_DUCKDB_PATH",
    "ENV_DUCKDB_PATH",
    "VIEW_NAMES",
    "BuildConflictError",
    "MetricsStore",
    "UnknownBuildError",
    "WriteReceipt",
    "case_payload",
    "default_store_path",
]
