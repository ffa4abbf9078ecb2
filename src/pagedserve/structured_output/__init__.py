"""Structured outputs (grammar-constrained decoding) on llguidance: the front end compiles, the core masks."""
