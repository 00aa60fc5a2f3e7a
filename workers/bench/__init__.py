"""Benchmarks of the runtime's plumbing (figures, not pass/fail tests)."""
