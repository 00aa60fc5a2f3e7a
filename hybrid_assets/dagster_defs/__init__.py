"""Dagster wiring: resources, the asset factory, the new-build sensor. It wires; the
harness computes."""
