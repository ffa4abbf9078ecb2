"""Peer systems for `make bench`: transformers, upstream vLLM (CPU build) and llama.cpp's server."""
