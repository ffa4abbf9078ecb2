"""What the engine core hands back for a step: each sequence's `SequenceOutput` (new tokens, logprobs, embedding,
finish reason and timings) from the scheduler's sequences and the runner's output."""

from __future__ import annotations

import time

from pagedserve.core.sequence import Sequence
from pagedserve.core.stats import IterationStats
from pagedserve.engine.core_messages import SequenceOutput
from pagedserve.worker.runner_output import ModelRunnerOutput


def step_outputs(
    sequences: dict[str, Sequence],
    result: ModelRunnerOutput,
    progressed: list[Sequence],
    iteration: IterationStats,
) -> list[SequenceOutput]:
    """The outputs of the sequences that progressed, and of those that only computed prompt logprobs this step
    (`sequences`: the scheduler's, by id); counts the step's generated tokens and latencies into `iteration`."""
    now = time.time()
    by_id = {seq.seq_id: seq for seq in progressed}
    prompt_only = [
        sequences[seq_id] for seq_id in result.prompt_logprobs if seq_id not in by_id and seq_id in sequences
    ]
    outputs = []
    for seq in progressed:
        if seq.sampling_params.pooling is not None:  # an embedding: its vector, not the token that ended it
            outputs.append(sequence_output(seq, [], result))
            continue
        count = seq.num_new_output_tokens
        iteration.num_generation_tokens += count
        if seq.num_output_tokens == count:
            iteration.time_to_first_tokens.append(now - seq.arrival_time)
        elif seq.last_inter_token_latency is not None:
            iteration.inter_token_latencies.append(seq.last_inter_token_latency)
        outputs.append(sequence_output(seq, seq.output_token_ids[-count:], result))
    outputs.extend(sequence_output(seq, [], result) for seq in prompt_only)
    return outputs


def aborted_output(seq_id: str, request_id: str, sample_index: int) -> SequenceOutput:
    """A sequence ended by the engine before it could run (its grammar or its adapter failed to load)."""
    return SequenceOutput(
        seq_id, request_id, sample_index, [], "abort", None, None, None, 0, 0, None, None, None, time.time()
    )


def sequence_output(seq: Sequence, new_token_ids: list[int], result: ModelRunnerOutput) -> SequenceOutput:
    prompt_logprobs = result.prompt_logprobs.get(seq.seq_id) if seq.sample_index == 0 else None
    return SequenceOutput(
        seq_id=seq.seq_id,
        request_id=seq.request_id,
        sample_index=seq.sample_index,
        new_token_ids=new_token_ids,
        finish_reason=seq.status.finish_reason if seq.is_finished else None,
        stop_reason=seq.stop_reason if isinstance(seq.stop_reason, int) else None,
        # Past a token that stopped the sequence, the step's later tokens (and their logprobs) are dropped.
        logprobs=result.logprobs[seq.seq_id][: len(new_token_ids)]
        if new_token_ids and seq.seq_id in result.logprobs
        else None,
        prompt_logprobs=prompt_logprobs,
        num_cached_tokens=seq.num_cached_tokens,
        embedding=result.embeddings.get(seq.seq_id),
        num_preemptions=seq.num_preemptions,
        first_scheduled_time=seq.first_scheduled_time,
        first_token_time=seq.first_token_time,
        last_token_time=seq.last_token_time,
        finished_time=seq.finished_time,
    )
