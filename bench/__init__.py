"""Benchmarks: `python -m bench.NAME` runs the competitors side by side and prints the ratio
on its last line. Speed and quality targets live here, never as timed assertions in tests."""
