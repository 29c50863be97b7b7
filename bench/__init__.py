"""Benchmarks: serving (req/s, latency, CPU per request), training (time to accuracy), data-parallel scaling."""
