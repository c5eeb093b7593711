"""Benchmarks: `wristmir bench --suite NAME` measures throughput and memory as ratios inside one
run and writes JSON (input, train, loss-memory, search, rerank, mining, localizer)."""
