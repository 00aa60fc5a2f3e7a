"""Regression detection across builds, per metric and testbed (issue 7, item 3)."""
