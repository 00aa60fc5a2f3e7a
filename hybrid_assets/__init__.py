"""Validation pipeline: the spec's test cases as Dagster assets over real workers."""
