"""Benchmarks: timings and quality figures, run by hand (``python -m bench.<name>``), quoted in docs/benchmarks.md."""
