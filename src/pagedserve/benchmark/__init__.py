"""Benchmarks: the `pagedserve bench` serving client (vLLM's `vllm bench serve` metrics) and offline runners.

This package sits beside `cli`: only `pagedserve.cli.bench` and `benchmarks/` import it. The serving client
talks HTTP to any OpenAI-compatible server and imports no engine code; only `offline.py` loads the engine.
"""
