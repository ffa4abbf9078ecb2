"""The sampling side of a step: the logits rows that sample (one a sequence, 1 + k with k draft tokens), their
sampling metadata and grammar mask, and each sequence's kept tokens with their logprobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pagedserve.core.scheduler_output import GrammarBitmask, ScheduledSequence
from pagedserve.sample.grammar_mask import apply_grammar_bitmask
from pagedserve.sample.metadata import SamplingMetadata, SamplingRow
from pagedserve.sample.sampler import Sampler
from pagedserve.worker.inputs import StepInputs
from pagedserve.worker.runner_output import ModelRunnerOutput
from pagedserve.worker.speculative import accepted_tokens, history_end, sampling_row_offsets

if TYPE_CHECKING:
    from pagedserve.worker.model_runner import RunnerSequence


def reads_history(params: Any) -> bool:
    """Whether sampling reads the generated tokens (penalties, min_tokens, bad_words): a copy a row a step is spared otherwise
    (256 rows x 1000 tokens ~ 1 ms)."""
    return bool(
        params.presence_penalty
        or params.frequency_penalty
        or params.repetition_penalty != 1.0
        or params.min_tokens
        or params.bad_words_token_ids
    )


def sample_sequences(
    model: Any,
    sampler: Sampler,
    step: StepInputs,
    states: list[RunnerSequence],
    sampling: list[tuple[int, ScheduledSequence]],
    hidden: torch.Tensor | None,
    step_logits: torch.Tensor | None,
    vocab_size: int,
    device: torch.device,
    bitmask: GrammarBitmask | None,
    result: ModelRunnerOutput,
) -> None:
    """Samples the `sampling` sequences (index in the step, sequence) into `result`: their new tokens and, where
    asked, logprobs. The logits come from `step_logits` (a replayed decode graph's, every row) or else from the
    LM head on `hidden`."""
    rows: list[int] = []  # the logits rows that sample: one a sequence, 1 + k with k draft tokens
    sampling_rows: list[SamplingRow] = []
    first_rows: list[int] = []  # each sampling sequence's first place among them
    for i, seq in sampling:
        state = states[i]
        params = state.new.sampling_params
        reads = reads_history(params)
        first_rows.append(len(rows))
        for offset in sampling_row_offsets(seq):
            rows.append(step.last_token_rows[i] - offset)
            end = history_end(seq, offset)
            outputs = state.token_ids[state.num_prompt_tokens : end] if reads else []
            sampling_rows.append(SamplingRow(params, state.new.prompt_token_ids, outputs, state.generator))
    if step_logits is None:
        logits = model.compute_logits(hidden[rows])  # type: ignore[index]
    else:
        logits = step_logits if len(rows) == step_logits.shape[0] else step_logits[rows]
    metadata = SamplingMetadata.build(sampling_rows, vocab_size, device)
    if bitmask is not None:
        first = {seq.seq_id: first_rows[j] for j, (_, seq) in enumerate(sampling)}
        positions = bitmask.positions or [0] * len(bitmask.seq_ids)
        mask_rows = [first[seq_id] + p for seq_id, p in zip(bitmask.seq_ids, positions)]
        logits = apply_grammar_bitmask(logits, bitmask, mask_rows)
        metadata.grammar_masked = True
    out = sampler(logits, metadata)  # converts to float32 itself unless all rows are plain greedy
    token_ids = out.sampled_token_ids.tolist()
    kept: list[int] = []  # tokens kept per sampling sequence
    for j, (_, seq) in enumerate(sampling):
        first = first_rows[j]
        tokens = accepted_tokens(seq, token_ids[first : first + 1 + seq.num_draft_tokens])
        result.sampled_token_ids[seq.seq_id] = tokens
        kept.append(len(tokens))
    if out.logprobs is not None:
        ids, lps, ranks = (
            out.logprob_token_ids.tolist(),
            out.logprobs.tolist(),
            out.sampled_token_ranks.tolist(),
        )
        for j, (i, seq) in enumerate(sampling):
            k = states[i].new.sampling_params.logprobs
            if k is not None:
                span = range(first_rows[j], first_rows[j] + kept[j])
                result.logprobs[seq.seq_id] = [(ids[r][: 1 + k], lps[r][: 1 + k], ranks[r]) for r in span]
