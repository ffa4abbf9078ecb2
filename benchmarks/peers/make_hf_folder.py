"""Write the bundled GGUF as a Hugging Face folder (config, safetensors, tokenizer) for peers that need one.

upstream vLLM loads Hugging Face folders, not this GGUF; the folder holds the same weights, dequantized
once by transformers. Idempotent: an existing complete folder is kept. Runs in the project's venv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_DIR = Path(__file__).resolve().parents[2] / ".bench-cache" / "smollm2-135m-instruct-hf"
DONE_MARKER = ".complete"


def write_folder(target: Path, dtype: str = "bfloat16") -> Path:
    if (target / DONE_MARKER).exists():
        return target
    import torch
    from safetensors.torch import save_file

    from peers.hf_transformers import load_model

    model, tokenizer = load_model(dtype)
    target.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied: stored once, as the embedding
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    model.config.torch_dtype = getattr(torch, dtype)
    model.config.quantization_config = None
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]  # vLLM picks its model class from this
    model.config.__class__.from_dict(config).save_pretrained(str(target))
    model.generation_config.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    (target / DONE_MARKER).write_text("ok\n")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    print(write_folder(args.out, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
