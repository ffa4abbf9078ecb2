"""SchedulerOutput -> the step's input tensors and attention metadata."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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


def _padded(tables: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max(len(t) for t in tables)
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long, device=device)


def _tables(
    decodes: list[ScheduledSequence],
    prefills: list[ScheduledSequence],
    table_of: Callable[[ScheduledSequence], list[int]],
    block_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor], torch.Tensor | None]:
    """One KV cache group's slot mapping, decode block tables (a row per decode token), each prefill's table and
    the prefills' padded tables, from each sequence's table in that group."""
    slots: list[int] = []
    decode_tables: list[list[int]] = []
    for seq in decodes:
        table = table_of(seq)
        for pos in range(seq.start_position, seq.start_position + seq.num_new_tokens):
            slots.append(table[pos // block_size] * block_size + pos % block_size)
            decode_tables.append(table)
    prefill_tables = []
    for seq in prefills:
        table = table_of(seq)
        span = range(seq.start_position, seq.start_position + seq.num_new_tokens)
        slots.extend(table[p // block_size] * block_size + p % block_size for p in span)
        prefill_tables.append(table)
    return (
        torch.tensor(slots, dtype=torch.long, device=device),
        _padded(decode_tables, device) if decode_tables else None,
        [torch.tensor(t, dtype=torch.long, device=device) for t in prefill_tables],
        _padded(prefill_tables, device) if prefill_tables else None,
    )


def prepare_inputs(
    scheduled: list[ScheduledSequence],
    block_size: int,
    device: torch.device,
    layer_groups: list[int] | None = None,
) -> StepInputs:
    """A sequence verifying draft tokens runs as one decode row per token, each row attending up to its own
    position: every layer writes the step's K/V before attention reads the cache, so the rows see each other's
    keys causally, and the step stays a decode step (the decode kernels and graphs serve it). layer_groups: each
    layer's KV cache group on a hybrid model (kv_memory.py): group g > 0 reads
    `group_block_ids[g - 1]` of each sequence."""
    decodes = [s for s in scheduled if s.num_new_tokens == 1 or s.num_draft_tokens]
    prefills = [s for s in scheduled if s.num_new_tokens > 1 and not s.num_draft_tokens]
    ordered = decodes + prefills
    input_ids: list[int] = []
    positions: list[int] = []
    last_rows: list[int] = []
    seq_lens: list[int] = []
    for seq in decodes:
        for offset, token_id in enumerate(seq.token_ids):
            input_ids.append(token_id)
            positions.append(seq.start_position + offset)
            seq_lens.append(seq.start_position + offset + 1)
        last_rows.append(len(input_ids) - 1)
    chunk_rows: list[int] = []
    for seq in prefills:
        chunk_rows.append(len(input_ids))
        input_ids.extend(seq.token_ids)
        positions.extend(range(seq.start_position, seq.start_position + seq.num_new_tokens))
        last_rows.append(len(input_ids) - 1)
    slots, decode_tables, chunk_tables, prefill_tables = _tables(
        decodes, prefills, lambda s: s.block_ids, block_size, device
    )
    chunks = [
        PrefillChunk(row, seq.num_new_tokens, seq.start_position, table)
        for row, seq, table in zip(chunk_rows, prefills, chunk_tables)
    ]
    metadata = AttentionMetadata(slot_mapping=slots, prefills=chunks)
    if prefills:
        long = torch.long
        metadata.prefill_query_starts = torch.tensor(chunk_rows, dtype=long, device=device)
        metadata.prefill_query_lens = torch.tensor([c.num_tokens for c in chunks], dtype=long, device=device)
        metadata.prefill_context_lens = torch.tensor(
            [c.context_len for c in chunks], dtype=long, device=device
        )
        metadata.prefill_block_tables = prefill_tables
        metadata.prefill_max_query_len = max(c.num_tokens for c in chunks)
    if decodes:
        metadata.num_decode_tokens = len(seq_lens)
        metadata.decode_block_tables = decode_tables
        metadata.decode_seq_lens = torch.tensor(seq_lens, dtype=torch.long, device=device)
        metadata.decode_max_seq_len = max(seq_lens)
    if layer_groups is not None and max(layer_groups) > 0:
        metadata.layer_groups = layer_groups
        for group in range(1, max(layer_groups) + 1):
            slots, decode_tables, chunk_tables, prefill_tables = _tables(
                decodes, prefills, lambda s, g=group: s.group_block_ids[g - 1], block_size, device
            )
            metadata.group_metadata.append(
                dataclasses.replace(
                    metadata,
                    slot_mapping=slots,
                    decode_block_tables=decode_tables,
                    prefill_block_tables=prefill_tables,
                    prefills=[dataclasses.replace(c, block_table=t) for c, t in zip(chunks, chunk_tables)],
                    layer_groups=None,
                    group_metadata=[],
                )
            )
    return StepInputs(
        ordered,
        torch.tensor(input_ids, dtype=torch.long, device=device),
        torch.tensor(positions, dtype=torch.long, device=device),
        metadata,
        last_rows,
    )
