"""SchedulerOutput -> the step's input tensors and attention metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedserve.attention.backend import AttentionMetadata, PrefillChunk
from pagedserve.core.scheduler_output import ScheduledSequence


@dataclass
class StepInputs:
    sequences: list[
        ScheduledSequence
    ]  # in token order: decodes (and draft verifications) first, then prefills
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    metadata: AttentionMetadata
    last_token_rows: list[int]  # row of each sequence's last token this step


def prepare_inputs(scheduled: list[ScheduledSequence], block_size: int, device: torch.device) -> StepInputs:
    """A sequence verifying draft tokens runs as one decode row per token, each row attending up to its own
    position: every layer writes the step's K/V before attention reads the cache, so the rows see each other's
    keys causally, and the step stays a decode step (the decode kernels and graphs serve it)."""
    decodes = [s for s in scheduled if s.num_new_tokens == 1 or s.num_draft_tokens]
    prefills = [s for s in scheduled if s.num_new_tokens > 1 and not s.num_draft_tokens]
    ordered = decodes + prefills
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    last_rows: list[int] = []
    decode_tables: list[list[int]] = []
    seq_lens: list[int] = []
    for seq in decodes:
        for offset, token_id in enumerate(seq.token_ids):
            pos = seq.start_position + offset
            input_ids.append(token_id)
            positions.append(pos)
            slots.append(seq.block_ids[pos // block_size] * block_size + pos % block_size)
            decode_tables.append(seq.block_ids)
            seq_lens.append(pos + 1)
        last_rows.append(len(input_ids) - 1)
    chunks: list[PrefillChunk] = []
    for seq in prefills:
        start = seq.start_position
        row = len(input_ids)
        input_ids.extend(seq.token_ids)
        span = range(start, start + seq.num_new_tokens)
        positions.extend(span)
        slots.extend(seq.block_ids[p // block_size] * block_size + p % block_size for p in span)
        last_rows.append(len(input_ids) - 1)
        chunks.append(
            PrefillChunk(
                row, seq.num_new_tokens, start, torch.tensor(seq.block_ids, dtype=torch.long, device=device)
            )
        )
    metadata = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=device), prefills=chunks
    )
    if prefills:
        long = torch.long
        metadata.prefill_query_starts = torch.tensor(
            [c.token_start for c in chunks], dtype=long, device=device
        )
        metadata.prefill_query_lens = torch.tensor([c.num_tokens for c in chunks], dtype=long, device=device)
        metadata.prefill_context_lens = torch.tensor(
            [c.context_len for c in chunks], dtype=long, device=device
        )
        width = max(len(s.block_ids) for s in prefills)
        tables = [s.block_ids + [0] * (width - len(s.block_ids)) for s in prefills]
        metadata.prefill_block_tables = torch.tensor(tables, dtype=long, device=device)
        metadata.prefill_max_query_len = max(c.num_tokens for c in chunks)
    if decodes:
        max_blocks = max(len(table) for table in decode_tables)
        tables = [table + [0] * (max_blocks - len(table)) for table in decode_tables]
        metadata.num_decode_tokens = len(seq_lens)
        metadata.decode_block_tables = torch.tensor(tables, dtype=torch.long, device=device)
        metadata.decode_seq_lens = torch.tensor(seq_lens, dtype=torch.long, device=device)
        metadata.decode_max_seq_len = max(seq_lens)
    return StepInputs(
        ordered,
        torch.tensor(input_ids, dtype=torch.long, device=device),
        torch.tensor(positions, dtype=torch.long, device=device),
        metadata,
        last_rows,
    )
