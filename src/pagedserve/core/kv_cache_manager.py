"""Per-sequence block tables on top of the block pool: prefix-cache lookup, allocation, freeing."""

from __future__ import annotations

from dataclasses import dataclass

from pagedserve.core.block_pool import BlockHash, BlockPool, KVCacheBlock, hash_block_tokens
from pagedserve.core.sequence import Sequence


@dataclass
class PrefixCacheStats:
    queries: int = 0  # tokens looked up
    hits: int = 0  # tokens found

    def reset(self) -> PrefixCacheStats:
        taken = PrefixCacheStats(self.queries, self.hits)
        self.queries = self.hits = 0
        return taken


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self._req_to_hashes: dict[str, list[BlockHash]] = {}
        self.prefix_cache_stats = PrefixCacheStats()

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

    def get_computed_blocks(self, seq: Sequence) -> tuple[list[KVCacheBlock], int]:
        """Longest cached prefix of full blocks. The last token is always recomputed (its logits are needed)."""
        if not self.enable_caching or getattr(seq.sampling_params, "prompt_logprobs", None) is not None:
            return [], 0
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hashes = self._block_hashes(seq, max_blocks * self.block_size)
        computed: list[KVCacheBlock] = []
        for block_hash in hashes[:max_blocks]:
            block = self.pool.get_cached_block(block_hash)
            if block is None:
                break
            computed.append(block)
        return computed, len(computed) * self.block_size

    def record_prefix_lookup(self, num_queried_tokens: int, num_hit_tokens: int) -> None:
        if self.enable_caching:
            self.prefix_cache_stats.queries += num_queried_tokens
            self.prefix_cache_stats.hits += num_hit_tokens

    def allocate_slots(
        self, seq: Sequence, num_new_tokens: int, new_computed_blocks: list[KVCacheBlock] | None = None
    ) -> list[KVCacheBlock] | None:
        """Make room for `num_new_tokens` after the computed ones; None (and no change) if the pool is short."""
        if num_new_tokens < 1:
            raise ValueError("num_new_tokens must be >= 1")
        new_computed_blocks = new_computed_blocks or []
        blocks = self.req_to_blocks.setdefault(seq.seq_id, [])
        num_computed = seq.num_computed_tokens + len(new_computed_blocks) * self.block_size
        total_tokens = num_computed + num_new_tokens
        num_required = self.blocks_needed(total_tokens) - len(blocks) - len(new_computed_blocks)
        # Reviving a free cached block takes it out of the free queue too.
        num_revived = sum(1 for b in new_computed_blocks if b.ref_cnt == 0)
        if num_required + num_revived > self.pool.num_free_blocks:
            if not blocks:
                del self.req_to_blocks[seq.seq_id]
            return None
        self.pool.touch(new_computed_blocks)
        blocks.extend(new_computed_blocks)
        new_blocks = self.pool.get_new_blocks(max(num_required, 0))
        blocks.extend(new_blocks)
        if self.enable_caching:
            # Register every block that will be full once this step has run: same-step siblings (n > 1) can hit
            # it because each layer writes the whole batch's K/V before any attention reads it.
            # Draft tokens (speculative decoding) are not the sequence's yet: their blocks wait until accepted.
            hashes = self._block_hashes(seq, min(total_tokens, seq.num_tokens))
            for block, block_hash in zip(blocks, hashes):
                self.pool.cache_block(block, block_hash)
        return new_blocks

    def free(self, seq: Sequence) -> None:
        blocks = self.req_to_blocks.pop(seq.seq_id, [])
        # Tail blocks first, so a sequence's later blocks are evicted before its shared prefix.
        self.pool.free_blocks(reversed(blocks))
        self._req_to_hashes.pop(seq.seq_id, None)

    def forget_hashes(self, seq: Sequence) -> None:
        self._req_to_hashes.pop(seq.seq_id, None)

    def get_block_ids(self, seq_id: str) -> list[int]:
        return [b.block_id for b in self.req_to_blocks.get(seq_id, [])]

    def check_invariants(self) -> None:
        self.pool.check_invariants()
        counted: dict[int, int] = {}
        for blocks in self.req_to_blocks.values():
            for block in blocks:
                counted[block.block_id] = counted.get(block.block_id, 0) + 1
        for block in self.pool.blocks:
            assert block.ref_cnt == counted.get(block.block_id, 0), (
                f"{block} held {counted.get(block.block_id, 0)}x"
            )
