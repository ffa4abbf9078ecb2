"""Per-sequence block tables on top of the block pool: prefix-cache lookup, allocation, freeing.

One table per KV cache group (kv_memory.py), all drawing on one pool. A sliding-window group's blocks
that no future query can see go back to the pool while the sequence runs; their places in its table hold the null
block (block 0, never allocated, never written), which the attention kernels skip as out of the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagedserve.core.block_pool import BlockHash, BlockPool, KVCacheBlock, hash_block_tokens
from pagedserve.core.sequence import Sequence
from pagedserve.kv_memory import sequence_blocks, window_blocks

# Each group's blocks of a prefix-cache hit, one list per group (all of one length); [] when nothing was hit.
ComputedBlocks = list[list[KVCacheBlock]]


@dataclass
class PrefixCacheStats:
    queries: int = 0  # tokens looked up
    hits: int = 0  # tokens found

    def reset(self) -> PrefixCacheStats:
        taken = PrefixCacheStats(self.queries, self.hits)
        self.queries = self.hits = 0
        return taken


class KVCacheManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        group_windows: list[int | None] | None = None,
    ) -> None:
        """group_windows: each KV cache group's sliding window (None: full attention); one full group by default."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.group_windows = list(group_windows or [None])
        if any(w is not None and w < 1 for w in self.group_windows):
            raise ValueError(f"sliding windows must be >= 1, got {self.group_windows}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching, reserve_null=self.has_windows)
        self.req_to_blocks: dict[str, list[list[KVCacheBlock]]] = {}
        self._req_to_hashes: dict[str, list[BlockHash]] = {}
        self._num_registered: dict[str, int] = {}  # a sequence's leading blocks already offered to the cache
        self.prefix_cache_stats = PrefixCacheStats()

    @property
    def has_windows(self) -> bool:
        return any(w is not None for w in self.group_windows)

    @property
    def num_groups(self) -> int:
        return len(self.group_windows)

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    def usage(self) -> float:
        return self.pool.usage()

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_for_sequence(self, num_tokens: int, max_num_batched_tokens: int) -> int:
        """The most blocks one sequence of `num_tokens` holds at once, over every group."""
        return sequence_blocks(num_tokens, self.block_size, self.group_windows, max_num_batched_tokens)

    def longest_sequence(self, max_num_batched_tokens: int, upper: int) -> int:
        """The most tokens (at most `upper`) one sequence can hold in the whole pool."""
        low, high = 0, upper
        while low < high:
            middle = (low + high + 1) // 2
            if self.blocks_for_sequence(middle, max_num_batched_tokens) <= self.num_blocks:
                low = middle
            else:
                high = middle - 1
        return low

    def _block_hashes(self, seq: Sequence, num_tokens: int) -> list[BlockHash]:
        """Hashes of the full blocks among the first `num_tokens` tokens, extended incrementally."""
        hashes = self._req_to_hashes.setdefault(seq.seq_id, [])
        num_full = num_tokens // self.block_size
        tokens = seq.all_token_ids
        bs = self.block_size
        while len(hashes) < num_full:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            salt = seq.hash_salt if i == 0 else None
            hashes.append(hash_block_tokens(parent, tokens[i * bs : (i + 1) * bs], salt))
        return hashes

    def _cached(self, group: int, block_hash: BlockHash) -> KVCacheBlock | None:
        return self.pool.get_cached_block((group, block_hash))

    def get_computed_blocks(self, seq: Sequence) -> tuple[ComputedBlocks, int]:
        """Longest cached prefix of full blocks. The last token is always recomputed (its logits are needed). A
        full-attention group needs every block of the prefix; a window group only the blocks its window reaches from
        the first token computed next (vLLM's hybrid rule: the shortest length every group can resume from)."""
        if not self.enable_caching or getattr(seq.sampling_params, "prompt_logprobs", None) is not None:
            return [], 0
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hashes = self._block_hashes(seq, max_blocks * self.block_size)
        hit = max_blocks
        for group, window in enumerate(self.group_windows):
            if window is None:
                found = 0
                while found < hit and self._cached(group, hashes[found]) is not None:
                    found += 1
                hit = found
        changed = True
        while changed and hit:  # each window group may shorten the hit, which another must then re-check
            changed = False
            for group, window in enumerate(self.group_windows):
                if window is not None:
                    shorter = self._window_hit(group, window, hashes, hit)
                    changed |= shorter < hit
                    hit = shorter
        if hit == 0:
            return [], 0
        computed: ComputedBlocks = []
        for group, window in enumerate(self.group_windows):
            reach = 0 if window is None else hit - min(hit, window_blocks(window, self.block_size))
            null = [self.pool.null_block] * reach
            computed.append(null + [self._cached(group, h) for h in hashes[reach:hit]])  # type: ignore[misc]
        return computed, hit * self.block_size

    def _window_hit(self, group: int, window: int, hashes: list[BlockHash], hit: int) -> int:
        """The longest prefix of at most `hit` blocks whose last window_blocks are cached in this group (a shorter
        run that starts at block 0 is enough: nothing before it is read)."""
        needed = window_blocks(window, self.block_size)
        if needed == 0:
            return hit
        run = 0
        for i in range(hit - 1, -1, -1):
            if self._cached(group, hashes[i]) is None:
                run = 0
                continue
            run += 1
            if run >= needed:
                return i + needed
        return run

    def record_prefix_lookup(self, num_queried_tokens: int, num_hit_tokens: int) -> None:
        if self.enable_caching:
            self.prefix_cache_stats.queries += num_queried_tokens
            self.prefix_cache_stats.hits += num_hit_tokens

    def _free_out_of_window(self, tables: list[list[KVCacheBlock]], num_computed: int) -> None:
        """Return the window groups' blocks that no query from position `num_computed` on can see."""
        null = self.pool.null_block
        for table, window in zip(tables, self.group_windows):
            if window is None:
                continue
            # Keys before num_computed - window + 1 are out of every future query's window.
            skipped = min(max(0, num_computed - window + 1) // self.block_size, len(table))
            freed = []
            for i in range(skipped - 1, -1, -1):
                if table[i] is null:
                    break  # everything before it was freed earlier
                freed.append(table[i])
                table[i] = null
            self.pool.free_blocks(reversed(freed))  # earliest first: the first evicted

    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, new_computed_blocks: ComputedBlocks | None = None
    ) -> list[KVCacheBlock] | None:
        """Make room for `num_new_tokens` after the computed ones; None (and no change but freeing blocks out of
        every window) if the pool is short. Returns the blocks taken from the pool."""
        if num_new_tokens < 1:
            raise ValueError("num_new_tokens must be >= 1")
        new_computed_blocks = new_computed_blocks or [[] for _ in self.group_windows]
        created = seq.seq_id not in self.req_to_blocks
        tables = self.req_to_blocks.setdefault(seq.seq_id, [[] for _ in self.group_windows])
        if self.has_windows and not created:
            self._free_out_of_window(tables, seq.num_computed_tokens)
        num_hit = len(new_computed_blocks[0])
        num_computed = seq.num_computed_tokens + num_hit * self.block_size
        total_tokens = num_computed + num_new_tokens
        total_blocks = self.blocks_needed(total_tokens)
        required = [max(0, total_blocks - len(t) - num_hit) for t in tables]
        # Reviving a free cached block takes it out of the free queue too.
        null = self.pool.null_block
        revived = [b for blocks in new_computed_blocks for b in blocks if b.ref_cnt == 0 and b is not null]
        if sum(required) + len(revived) > self.pool.num_free_blocks:
            if created:
                del self.req_to_blocks[seq.seq_id]
            return None
        taken: list[KVCacheBlock] = []
        for table, hit, count in zip(tables, new_computed_blocks, required):
            self.pool.touch(b for b in hit if b is not self.pool.null_block)
            table.extend(hit)
            new_blocks = self.pool.get_new_blocks(count)
            table.extend(new_blocks)
            taken.extend(new_blocks)
        if self.has_windows and num_hit:
            self._free_out_of_window(tables, num_computed)
        if self.enable_caching:
            # Register every block that will be full once this step has run: same-step siblings (n > 1) can hit
            # it because each layer writes the whole batch's K/V before any attention reads it.
            # Draft tokens (speculative decoding) are not the sequence's yet: their blocks wait until accepted.
            full_tokens = min(total_tokens, seq.num_tokens)
            hashes = self._block_hashes(seq, full_tokens)
            start, end = self._num_registered.get(seq.seq_id, 0), full_tokens // self.block_size
            null = self.pool.null_block
            for group, table in enumerate(tables):
                for i in range(start, end):
                    if table[i] is not null:
                        self.pool.cache_block(table[i], (group, hashes[i]))
            self._num_registered[seq.seq_id] = max(start, end)
        return taken

    def free(self, seq: Sequence, computed_tokens: int | None = None) -> None:
        """computed_tokens: the sequence leaves a step it was scheduled in (a preemption after its allocation), so
        its blocks past what was computed were registered for K/V never written: their hashes are forgotten."""
        tables = self.req_to_blocks.pop(seq.seq_id, [])
        null = self.pool.null_block
        if computed_tokens is not None:
            for table in tables:
                for block in table[computed_tokens // self.block_size :]:
                    if block is not null and block.ref_cnt == 1:  # shared ones: a same-step sibling's (kept)
                        self.pool.uncache(block)
        for table in tables:
            # Tail blocks first, so a sequence's later blocks are evicted before its shared prefix.
            self.pool.free_blocks(b for b in reversed(table) if b is not null)
        self._req_to_hashes.pop(seq.seq_id, None)
        self._num_registered.pop(seq.seq_id, None)

    def forget_hashes(self, seq: Sequence) -> None:
        self._req_to_hashes.pop(seq.seq_id, None)

    def get_block_ids(self, seq_id: str, group: int = 0) -> list[int]:
        """One group's block table (the null block's id, 0, where a window group freed a block)."""
        tables = self.req_to_blocks.get(seq_id)
        return [b.block_id for b in tables[group]] if tables else []

    def check_invariants(self) -> None:
        self.pool.check_invariants()
        counted: dict[int, int] = {}
        null = self.pool.null_block
        for tables in self.req_to_blocks.values():
            assert len(tables) == self.num_groups
            for table in tables:
                for block in table:
                    if block is not null:
                        counted[block.block_id] = counted.get(block.block_id, 0) + 1
        for block in self.pool.blocks:
            if block is not null:
                assert block.ref_cnt == counted.get(block.block_id, 0), (
                    f"{block} held {counted.get(block.block_id, 0)}x"
                )
