"""In-process federation for fast deterministic tests and benchmarks (no Ray, no sockets)."""
