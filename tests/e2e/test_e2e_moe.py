"""A mixture-of-experts model on a real server at --tensor-parallel-size 2, through the openai SDK: a tiny random
Qwen3-MoE folder (transformers' Hub layout, the bundled tokenizer and its chat template). The greedy chat reply,
streamed, is transformers' greedy continuation of the same templated prompt; /v1/models and the metrics are as
for any model."""

from __future__ import annotations

import openai
import pytest
import torch

from tests.tiny_models import bundled_tokenizer, write_tiny_moe

from .conftest import launch, metric_value

pytestmark = [pytest.mark.server, pytest.mark.slow]

MESSAGES = [{"role": "user", "content": "Name three colours of the sea."}]


@pytest.fixture(scope="module")
def moe_server(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny-qwen3-moe")
    model = write_tiny_moe(folder, "qwen3_moe").eval()
    server = launch(
        tmp_path_factory.mktemp("moe-server"), str(folder), "--served-model-name", "tiny-moe", "--dtype",
        "float32", "--tensor-parallel-size", "2", "--max-model-len", "256",
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server, model
    finally:
        server.terminate()


def test_streamed_greedy_chat_is_transformers_greedy_continuation(moe_server) -> None:
    server, model = moe_server
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == ["tiny-moe"]
    stream = client.chat.completions.create(
        model="tiny-moe", messages=MESSAGES, temperature=0, max_tokens=12, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens == 12

    tokenizer = bundled_tokenizer()
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
    prompt = prompt if isinstance(prompt, torch.Tensor) else prompt["input_ids"]
    assert usage.prompt_tokens == prompt.shape[1]
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    # transformers' top-2 logits stay >= 0.117 apart along this path (seed 5): no near-tie for a sum order to flip.
    assert text == tokenizer.decode(expected[0, prompt.shape[1] :], skip_special_tokens=True)
    assert metric_value(server, "vllm:generation_tokens_total", model_name="tiny-moe") >= 12
