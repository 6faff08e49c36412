"""Throughput and memory benchmarks; each prints one line per figure (`python -m benchmarks.X`)."""
