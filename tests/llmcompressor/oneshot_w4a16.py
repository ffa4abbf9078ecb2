"""Runs inside the llm-compressor venv (venv.py), never imported by the suite: quantizes a float Hugging Face folder
with llm-compressor's own `oneshot` and QuantizationModifier — int4 symmetric weights in groups of 64 (the bundled
model's 576-wide layers need 64; the W4A16 preset's 128 does not divide them), round-to-nearest min-max scales (no
calibration data: weight-only schemes need none), LM head left in float — and saves it compressed
(pack-quantized), as users' W4A16 checkpoints on the hub are written.

    python oneshot_w4a16.py SOURCE_FOLDER OUT_FOLDER
"""

import sys

import torch
import transformers
from llmcompressor.modifiers.quantization import QuantizationModifier

from llmcompressor import oneshot


def main(source: str, out: str) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    recipe = QuantizationModifier(
        config_groups={
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": 4,
                    "type": "int",
                    "symmetric": True,
                    "strategy": "group",
                    "group_size": 64,
                },
            }
        },
        ignore=["lm_head"],
    )
    oneshot(model=model, recipe=recipe)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
