"""--no-enable-chunked-prefill on the bundled model: every prompt is computed in one step (never split across
steps), the greedy text is the chunked engine's, and a budget below max_model_len stops the start (vLLM's check)."""

from __future__ import annotations

import pytest

from pagedserve import LLM, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.model]

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


def test_prompts_are_computed_whole_and_give_the_chunked_engines_text(bundled_llm_fp32):
    # Three ~420-token prompts: with chunked prefill the 1024-token budget splits the third; without, it waits.
    prompts = [f"Story {i}: " + "the river runs past the old mill and the quiet town " * 38 for i in range(3)]
    llm = LLM(dtype="float32", max_model_len=1024, kv_cache_memory_bytes=256 * 1024**2, seed=0,
              enable_chunked_prefill=False, max_num_batched_tokens=1024)  # fmt: skip
    scheduler = llm.llm_engine.scheduler
    assert scheduler.chunked_prefill is False
    partial: list[tuple[str, int, int]] = []
    steps: list[int] = []
    original = scheduler.schedule

    def recording_schedule():  # every scheduled prefill must end at the prompt's end
        out = original()
        steps.append(len(out.sequences))
        for s in out.sequences:
            sequence = scheduler.sequences[s.seq_id]
            start = sequence.num_computed_tokens
            if start < sequence.num_prompt_tokens and start + s.num_new_tokens < sequence.num_prompt_tokens:
                partial.append((s.seq_id, start, s.num_new_tokens))
        return out

    scheduler.schedule = recording_schedule
    outputs = llm.generate(prompts, GREEDY, use_tqdm=False)
    assert partial == []
    assert steps[:2] == [2, 3]  # the third prompt waited for a step with room for all of it
    expected = bundled_llm_fp32.generate(prompts, GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [o.outputs[0].token_ids for o in expected]


def test_a_budget_below_max_model_len_is_refused_without_chunked_prefill():
    with pytest.raises(
        ValueError, match=r"max_num_batched_tokens \(512\) is smaller than max_model_len \(1024\)"
    ):
        LLM(max_model_len=1024, enable_chunked_prefill=False, max_num_batched_tokens=512)
