"""Benchmarks: engine vs the physical baseline in the same run (not collected by pytest)."""
