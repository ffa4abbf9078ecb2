"""LoRA adapters: the request's plain-data handle and the PEFT folder format (no torch here)."""
