"""Entry point for Dagster (workspace.yaml loads ``hybrid_assets.definitions``)."""

from hybrid_assets.dagster_defs.definitions import build_definitions

defs = build_definitions()
