"""Decode steps replayed as recorded C kernel calls: the CPU's counterpart of CUDA graphs.

A small decode batch spends more time in Python than in arithmetic: the bundled model's step is ~300 kernel calls
(10 a layer), each behind a module call, shape checks and a ctypes crossing. The first decode step of each batch
size runs the model once on static input buffers while `ops/recording.py` records every kernel call; later steps
of that size copy their inputs into the same buffers and replay the calls: one Python loop, no modules, no
allocations. Measured on the bundled Q4_1 model, 1 sequence: see docs/architecture.md ("CPU decode graphs").

A replay is only the same computation when the recorded pass did nothing but kernel calls on tensors that stay
where they were: during capture a dispatch mode keeps every tensor the pass allocates alive (so no address is
reused elsewhere) and refuses the graph if any PyTorch operation computed something (a path without a C kernel:
then that batch size stays eager, logged once). Every address a call reads or writes is then either a static
buffer of the graph, a tensor the pass allocated, or a model weight / KV cache that lives as long as the runner.

The recorded pointers into the tensors the pass allocated are then rewritten into one arena that the graphs of
every batch size share (worker/graph_arena.py: tensors whose spans of calls do not overlap share bytes), and the
pass's tensors let go; a replay right after must reproduce the recorded pass's logits exactly, or that batch size
stays eager.

Like vLLM's CUDA graphs: decode-only steps, one graph per batch size up to `MAX_GRAPH_BATCH`, `--enforce-eager`
turns them off.

Under tensor parallelism (CPU ranks on one machine) the shared-memory all-reduces are C calls too and are replayed
with the rest: every rank captures and replays at the same steps (they all run every step), and a rank whose step
stays eager makes the same collectives in the same order, so the ranks' call numbers always agree. Ranks keep or
refuse a capture alike (the same operations run on each), so their checking replays meet too. Over gloo (no
shared-memory region) there is nothing to replay and the runner keeps steps eager.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pagedserve.attention.backend import AttentionMetadata
from pagedserve.ops import build as cpu_kernels
from pagedserve.ops.recording import KernelRecording, ReplayProgram
from pagedserve.worker.graph_arena import Allocation, ArenaPlan, plan_arena

logger = logging.getLogger("pagedserve")

# Steps of up to 32 sequences are recorded: the GGUF GEMVs take that many rows on AVX-512 (ops/csrc/gguf.c), and
# Python was still ~30 % of an eager step of 16 or 32 sequences of the bundled model (BENCHMARKS.md, 2026-12-08).
# A batch size whose step computes with PyTorch (float32 weights past the float GEMV's 4 rows) stays eager.
MAX_GRAPH_BATCH = 32

_aten = torch.ops.aten
# Operations that allocate or make views and compute nothing: allowed while recording.
_NO_COMPUTE = frozenset(
    {
        _aten.empty, _aten.empty_like, _aten.empty_strided, _aten.view, _aten._unsafe_view, _aten.alias,
        _aten.slice, _aten.narrow, _aten.select, _aten.split, _aten.split_with_sizes, _aten.unbind,
        _aten.as_strided, _aten.t, _aten.transpose, _aten.permute, _aten.unsqueeze, _aten.squeeze,
        _aten.expand, _aten.detach, _aten.reshape,
    }
)  # fmt: skip
# Of those, the operations that allocate: what the graph arena places (worker/graph_arena.py).
_ALLOCATING = frozenset({_aten.empty, _aten.empty_like, _aten.empty_strided})


class _CaptureGuard(TorchDispatchMode):
    """Keeps every tensor made while active alive and notes operations that compute."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[Any] = []
        self.computed: set[str] = set()
        self.allocations: dict[int, Allocation] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in _ALLOCATING:
            storage = out.untyped_storage()
            self.allocations[storage.data_ptr()] = Allocation(storage.data_ptr(), storage.nbytes())
        # `x.to(x.dtype)` and the like return their input: nothing computed.
        returned_input = bool(args) and out is args[0]
        if func.overloadpacket not in _NO_COMPUTE and not returned_input:
            self.computed.add(str(func.overloadpacket))
        self.kept.append(out)
        return out


class DecodeGraph:
    """The recorded decode step for one batch size, and the static buffers its calls read."""

    def __init__(
        self,
        batch: int,
        hidden_size: int,
        table_width: int,
        dtype: torch.dtype,
        layer_groups: list[int] | None = None,
    ) -> None:
        """layer_groups: each layer's KV cache group on a hybrid model (a slot mapping and tables per group)."""
        self.batch = batch
        self.inputs_embeds = torch.zeros(batch, hidden_size, dtype=dtype)
        self.positions = torch.zeros(batch, dtype=torch.int64)
        self.slot_mapping = torch.zeros(batch, dtype=torch.int64)
        self.block_tables = torch.zeros(batch, table_width, dtype=torch.int64)
        self.seq_lens = torch.ones(batch, dtype=torch.int64)
        self.metadata = AttentionMetadata(
            slot_mapping=self.slot_mapping,
            num_decode_tokens=batch,
            decode_block_tables=self.block_tables,
            decode_seq_lens=self.seq_lens,
        )
        if layer_groups is not None:
            self.metadata.layer_groups = layer_groups
            self.metadata.group_metadata = [
                AttentionMetadata(
                    slot_mapping=torch.zeros(batch, dtype=torch.int64),
                    num_decode_tokens=batch,
                    decode_block_tables=torch.zeros(batch, table_width, dtype=torch.int64),
                    decode_seq_lens=self.seq_lens,
                )
                for _ in range(max(layer_groups))
            ]
        self.program: ReplayProgram | None = None
        self.plan: ArenaPlan | None = None
        self.logits_offset: int | None = None  # the logits' place in the arena, in elements
        # Under tensor parallelism the recorded step ends at this rank's slice of the logits: joining the slices
        # concatenates with PyTorch, which a replay cannot hold, so it runs after each replay (one collective).
        self.local_logits: torch.Tensor | None = None
        self._gather: Any = None
        self.logits: torch.Tensor | None = None

    def load_inputs(
        self, inputs_embeds: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> None:
        assert metadata.decode_block_tables is not None and metadata.decode_seq_lens is not None
        self.inputs_embeds.copy_(inputs_embeds)
        self.positions.copy_(positions)
        self.seq_lens.copy_(metadata.decode_seq_lens)
        for static, step in zip(
            [self.metadata, *self.metadata.group_metadata], [metadata, *metadata.group_metadata]
        ):
            assert step.decode_block_tables is not None
            static.slot_mapping.copy_(step.slot_mapping)
            static.decode_block_tables[:, : step.decode_block_tables.shape[1]].copy_(step.decode_block_tables)  # type: ignore[index]
            # Read by the PyTorch decode path only (a step that uses it is not kept as a graph, but it is computed).
            static.decode_max_seq_len = metadata.decode_max_seq_len

    def capture(self, model: Any, kv_caches: list[Any]) -> bool:
        """Runs the step on the static buffers while recording; True when the recording can be replayed. Either
        way `self.logits` holds this step's logits."""
        recording = KernelRecording()
        guard = _CaptureGuard()
        with guard, recording.active():
            hidden = model(None, self.positions, kv_caches, self.metadata, inputs_embeds=self.inputs_embeds)
            self.local_logits = model.compute_local_logits(hidden)
        self._gather = model.gather_logits
        self.logits = self._gather(self.local_logits)
        if guard.computed:
            logger.info(
                "decode graphs: batch %d stays eager (PyTorch operations in the step: %s)",
                self.batch, ", ".join(sorted(guard.computed)),
            )  # fmt: skip
            return False
        self.program = recording.program()
        logits_base = self.local_logits.untyped_storage().data_ptr()
        live_to_end = [logits_base] if logits_base in guard.allocations else []
        self.plan = plan_arena(self.program.pointer_arguments(), guard.allocations.values(), live_to_end)
        if live_to_end:
            itemsize = self.local_logits.element_size()
            self.logits_offset = (
                self.plan.offsets[logits_base] // itemsize + self.local_logits.storage_offset()
            )
        # The pass's own tensors go when this returns (but the logits, which this step's caller reads): the
        # program points into the arena once `bind` has run.
        logger.info(
            "decode graphs: batch %d captured (%d kernel calls; its %.2f MB of tensors take %.2f MB of the arena)",
            self.batch, len(self.program), self.plan.allocated / 2**20, self.plan.size / 2**20,
        )  # fmt: skip
        return True

    def bind(self, arena: torch.Tensor) -> None:
        """Points the program (and the logits this graph returns) into `arena`, at least `plan.size` bytes."""
        assert self.program is not None and self.plan is not None and self.local_logits is not None
        address = arena.data_ptr()
        for call, slot, offset in self.plan.relocations:
            self.program.set_pointer(call, slot, address + offset)
        if self.logits_offset is not None:
            logits = self.local_logits
            self.local_logits = torch.empty(0, dtype=logits.dtype).set_(
                arena.untyped_storage(), self.logits_offset, logits.shape, logits.stride()
            )

    def replay(self) -> torch.Tensor:
        assert self.program is not None and self.local_logits is not None
        self.program.run()
        return self._gather(self.local_logits)


class DecodeGraphs:
    """One `DecodeGraph` per decode batch size, captured on first use."""

    def __init__(
        self,
        model: Any,
        kv_caches: list[Any],
        hidden_size: int,
        table_width: int,
        dtype: torch.dtype,
        layer_groups: list[int] | None = None,
    ) -> None:
        self.layer_groups = layer_groups
        self.model = model
        self.kv_caches = kv_caches
        self.hidden_size = hidden_size
        self.table_width = table_width
        self.dtype = dtype
        self.graphs: dict[int, DecodeGraph | None] = {}  # None: that batch size runs eagerly
        self.arena: torch.Tensor | None = None  # every graph's tensors (worker/graph_arena.py)

    @staticmethod
    def usable(device: torch.device, enforce_eager: bool) -> bool:
        return device.type == "cpu" and not enforce_eager and cpu_kernels.load() is not None

    def logits(
        self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> torch.Tensor | None:
        """The logits of a decode-only step of up to MAX_GRAPH_BATCH sequences, or None where this batch size
        runs eagerly. The tensor is the graph's own buffer: valid until the next step."""
        batch = input_ids.shape[0]
        if metadata.prefills or batch > MAX_GRAPH_BATCH or self.graphs.get(batch, 0) is None:
            return None
        assert metadata.decode_block_tables is not None
        # Blocks past max_model_len are no table this runner's graphs hold: eager computes that step.
        if metadata.decode_block_tables.shape[1] > self.table_width:
            return None
        graph = self.graphs.get(batch)
        captured = graph is not None
        if graph is None:
            graph = DecodeGraph(batch, self.hidden_size, self.table_width, self.dtype, self.layer_groups)
        embeds = self.model.embed_input_ids(input_ids)
        graph.load_inputs(embeds, positions, metadata)
        if captured:
            return graph.replay()
        kept = graph.capture(self.model, self.kv_caches)
        logits, graph.logits = graph.logits, None
        if kept:
            self._bind(graph)
            # The pass adds to its input buffer in place (the first residual): the replay loads the inputs again.
            # It rewrites this step's K/V with the same values, so it changes nothing.
            graph.load_inputs(embeds, positions, metadata)
            kept = self._replays_alike(graph, logits)
        self.graphs[batch] = graph if kept else None
        return logits

    def _bind(self, graph: DecodeGraph) -> None:
        """Points a captured graph into the shared arena; a larger arena rebinds every graph."""
        assert graph.plan is not None
        if self.arena is None or self.arena.numel() < graph.plan.size:
            self.arena = torch.empty(max(graph.plan.size, 1), dtype=torch.uint8)
            for other in self.graphs.values():
                if other is not None:
                    other.bind(self.arena)
        graph.bind(self.arena)

    @staticmethod
    def _replays_alike(graph: DecodeGraph, logits: torch.Tensor) -> bool:
        """True when the graph's replay in the arena reproduces the recorded pass's logits exactly."""
        if torch.equal(graph.replay(), logits):
            return True
        logger.warning(
            "decode graphs: batch %d stays eager (its replay in the shared arena differs from the recorded pass)",
            graph.batch,
        )
        return False
