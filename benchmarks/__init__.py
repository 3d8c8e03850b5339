"""Benchmarks: scripts that print figures and ratios (never timed unit tests)."""
