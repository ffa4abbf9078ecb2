"""A Hugging Face folder (sharded safetensors + index + tokenizer) served end to end, and the dummy load format.

The tiny model has random weights, so greedy tokens are compared with transformers' own greedy generation on the
same folder (float32).
"""

from __future__ import annotations

import pytest
import torch
import transformers

from pagedserve import LLM, SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def tiny_folder(tmp_path_factory, request):
    from pagedserve.models.bundled import bundled_model_path

    path = bundled_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )  # fmt: skip
    if request.param == "qwen2":
        config = transformers.Qwen2Config(**common)
        config.architectures = ["Qwen2ForCausalLM"]
    else:  # its own head size (32, not 64 / 4) and q/k norms
        config = transformers.Qwen3Config(**common, head_dim=32)
        config.architectures = ["Qwen3ForCausalLM"]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # the norms start at ones: make them matter
        for name, param in model.named_parameters():
            if name.endswith("_norm.weight"):
                param.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model.save_pretrained(folder, max_shard_size="2MB")
    tokenizer.save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").exists()
    return folder, model.eval(), tokenizer


def test_folder_greedy_matches_transformers(tiny_folder):
    folder, reference, tokenizer = tiny_folder
    llm = LLM(str(folder), dtype="float32", kv_cache_memory_bytes=32 * 1024**2, enable_prefix_caching=False)
    assert llm.llm_engine.info.model_name == folder.name
    prompts = ["Hello there", "The number four is"]
    outputs = llm.generate(
        prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), use_tqdm=False
    )
    for prompt, output in zip(prompts, outputs):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            expected = reference.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                                          attention_mask=torch.ones_like(ids), pad_token_id=0)  # fmt: skip
        assert output.prompt_token_ids == ids[0].tolist()
        assert output.outputs[0].token_ids == expected[0, ids.shape[1] :].tolist()


def test_dummy_load_format_runs_without_weights(tiny_folder):
    folder, _, _ = tiny_folder
    llm = LLM(str(folder), load_format="dummy", kv_cache_memory_bytes=16 * 1024**2, seed=3)
    out = llm.generate("hi", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 5
    assert llm.llm_engine.info.dtype == "float32"  # the config says float32 and nothing is quantized
