"""Benchmarks and evaluations: `scripts/bench NAME` runs `python -m fl_server.bench.NAME`."""
