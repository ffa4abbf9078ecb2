"""CUDA graphs for decode steps: captured once per batch-size bucket over static input buffers, then replayed.

A decode step of B sequences runs the graph of the smallest bucket >= B: the first B rows of the buffers hold the
step, the rest are padding (slot -1, so nothing is written to the cache; context length 0, so attention returns
zeros; token and position 0). Every graph is captured for `max_model_len` of context, so the decode kernel's
split-K grid is the same at every replay (partitions past a sequence's length return at once). Prefill steps,
batches past the largest bucket and `--enforce-eager` run eagerly.

Buckets are vLLM's: 1, 2, 4, then every 8, up to the first one that holds max_num_seqs (at most 512). Captured from
the largest down, sharing one memory pool, so the graphs together take about what the largest one does.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pagedserve.attention.backend import AttentionMetadata

logger = logging.getLogger("pagedserve")

MAX_CAPTURE_SIZE = 512
PAD_SLOT = -1


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Bucket sizes, ascending: 1, 2, 4, 8, 16, ... up to the first >= max_num_seqs (capped at 512)."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    sizes = []
    for size in [1, 2, 4, *range(8, MAX_CAPTURE_SIZE + 1, 8)]:
        sizes.append(size)
        if size >= max_num_seqs:
            break
    return sizes


def bucket_for(batch: int, sizes: list[int]) -> int | None:
    """The smallest bucket that holds `batch` decode rows; None past the largest (that step runs eagerly)."""
    for size in sizes:
        if size >= batch:
            return size
    return None


class DecodeBuffers:
    """The static tensors a captured graph reads: a step is copied in, padded up to its bucket."""

    def __init__(
        self,
        max_batch: int,
        max_blocks: int,
        max_model_len: int,
        device: torch.device,
        layer_groups: list[int] | None = None,
    ) -> None:
        """layer_groups: each layer's KV cache group on a hybrid model: a slot mapping and tables per group."""

        def longs(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.long, device=device)

        self.max_model_len = max_model_len
        self.layer_groups = layer_groups
        num_groups = 1 + (max(layer_groups) if layer_groups else 0)
        self.input_ids = longs(max_batch)
        self.positions = longs(max_batch)
        self.group_slots = [
            torch.full((max_batch,), PAD_SLOT, dtype=torch.long, device=device) for _ in range(num_groups)
        ]
        self.group_tables = [longs(max_batch, max_blocks) for _ in range(num_groups)]
        self.slot_mapping, self.block_tables = self.group_slots[0], self.group_tables[0]
        self.seq_lens = longs(max_batch)

    def metadata(self, size: int) -> AttentionMetadata:
        """Views of the first `size` rows: what the graph of that bucket was captured with."""
        groups = [
            AttentionMetadata(
                slot_mapping=slots[:size],
                num_decode_tokens=size,
                decode_block_tables=tables[:size],
                decode_seq_lens=self.seq_lens[:size],
                decode_max_seq_len=self.max_model_len,
            )
            for slots, tables in zip(self.group_slots, self.group_tables)
        ]
        if self.layer_groups is not None:
            groups[0].layer_groups, groups[0].group_metadata = self.layer_groups, groups[1:]
        return groups[0]

    def fits(self, metadata: AttentionMetadata) -> bool:
        tables = metadata.decode_block_tables
        return tables is not None and tables.shape[1] <= self.block_tables.shape[1]

    def fill(
        self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata, size: int
    ) -> None:
        """Copies a decode-only step of B <= size rows in and pads rows B..size-1 (device-to-device copies only)."""
        batch = input_ids.shape[0]
        tables = metadata.decode_block_tables
        assert tables is not None and metadata.decode_seq_lens is not None and batch <= size
        self.input_ids[:batch].copy_(input_ids)
        self.positions[:batch].copy_(positions)
        self.seq_lens[:batch].copy_(metadata.decode_seq_lens)
        steps = [metadata, *metadata.group_metadata]
        for slots, static_tables, step in zip(self.group_slots, self.group_tables, steps):
            assert step.decode_block_tables is not None
            slots[:batch].copy_(step.slot_mapping)
            static_tables[:batch, : tables.shape[1]].copy_(step.decode_block_tables)
            # Padded rows must write nothing (and, with seq_len 0, read nothing).
            slots[batch:size].fill_(PAD_SLOT)
        # Columns past this step's widest table keep older block ids: harmless, the kernel reads only up to
        # seq_len.
        self.input_ids[batch:size].zero_()
        self.positions[batch:size].zero_()
        self.seq_lens[batch:size].zero_()


class CudaDecodeGraphs:
    """Captured decode graphs of one model runner; `logits` replays one or says the step runs eagerly."""

    def __init__(
        self,
        model: Any,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        max_num_seqs: int,
        max_model_len: int,
        block_size: int,
        device: torch.device,
        layer_groups: list[int] | None = None,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.sizes = capture_sizes(max_num_seqs)
        self.buffers = DecodeBuffers(
            self.sizes[-1], -(-max_model_len // block_size), max_model_len, device, layer_groups
        )
        self.graphs: dict[int, Any] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def run(self, size: int) -> torch.Tensor:
        """The captured computation: logits of the first `size` buffer rows."""
        metadata = self.buffers.metadata(size)
        hidden = self.model(
            self.buffers.input_ids[:size], self.buffers.positions[:size], self.kv_caches, metadata
        )
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        pool = None
        for size in reversed(self.sizes):
            self.run(size)  # warm-up: Triton compiles and autotunes outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self.run(size)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info(
            "CUDA graphs captured for decode batches of %s sequences", ", ".join(map(str, self.sizes))
        )

    def logits(
        self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor | None:
        """Every row's logits of a decode-only step, or None where it runs eagerly. The tensor is the graph's own
        output buffer: valid until the next replay."""
        if metadata.prefills or not self.buffers.fits(metadata):
            return None
        batch = input_ids.shape[0]
        size = bucket_for(batch, self.sizes)
        if size is None or size not in self.graphs:
            return None
        self.buffers.fill(input_ids, positions, metadata, size)
        self.graphs[size].replay()
        return self.outputs[size][:batch]
