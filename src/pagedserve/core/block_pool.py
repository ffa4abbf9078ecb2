"""Fixed pool of KV cache blocks: reference counts, an LRU free queue, and the prefix-cache hash map.

As vLLM V1: a block whose reference count drops to 0 keeps its hash and content and goes to the tail of the free
queue; it can be revived by a prefix-cache hit until it reaches the head and is reused (evicted) for new tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

BlockHash = int


class KVCacheBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: CacheKey | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock({self.block_id}, ref={self.ref_cnt}, hash={self.block_hash})"


def hash_block_tokens(
    parent_hash: BlockHash | None, token_ids: Iterable[int], salt: object = None
) -> BlockHash:
    """Chained hash: a block's hash covers every token before it, so equal hashes mean equal prefixes. A salt (the
    request's cache_salt and LoRA adapter id, given for the first block only) carries into every later block
    through the chain."""
    if salt is not None:
        return hash((parent_hash, tuple(token_ids), salt))
    return hash((parent_hash, tuple(token_ids)))


# What the pool caches a block under: the KV cache group's index and the block's hash.
CacheKey = tuple[int, BlockHash]


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True, reserve_null: bool = False) -> None:
        """reserve_null: block 0 is the null block, never handed out (what window groups' tables hold in place
        of blocks they freed); `num_blocks` then counts the others."""
        if num_blocks < 1 + reserve_null:
            raise ValueError(f"num_blocks must be >= {1 + reserve_null}, got {num_blocks}")
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.null_block: KVCacheBlock | None = self.blocks[0] if reserve_null else None
        if self.null_block is not None:
            self.null_block.ref_cnt = 1  # pinned: never free, never counted as revived by a prefix hit
        usable = self.blocks[1:] if reserve_null else self.blocks
        self.num_blocks = len(usable)
        # block_id -> block, head = least recently freed = next to be reused.
        self._free: OrderedDict[int, KVCacheBlock] = OrderedDict((b.block_id, b) for b in usable)
        self._cached: dict[CacheKey, KVCacheBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def usage(self) -> float:
        return self.num_used_blocks / self.num_blocks

    def get_cached_block(self, block_hash: CacheKey) -> KVCacheBlock | None:
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on prefix-cache hits, reviving free cached blocks."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if num_blocks > len(self._free):
            raise ValueError(f"cannot allocate {num_blocks} blocks, {len(self._free)} free")
        new_blocks = []
        for _ in range(num_blocks):
            _, block = self._free.popitem(last=False)
            self._evict(block)
            block.ref_cnt = 1
            new_blocks.append(block)
        return new_blocks

    def uncache(self, block: KVCacheBlock) -> None:
        """Forget a block's hash: its K/V was never written (its sequence left the step it was allocated for)."""
        self._evict(block)

    def _evict(self, block: KVCacheBlock) -> None:
        if block.block_hash is not None:
            if self._cached.get(block.block_hash) is block:
                del self._cached[block.block_hash]
            block.block_hash = None

    def cache_block(self, block: KVCacheBlock, block_hash: CacheKey) -> None:
        """Register a full block under its hash (first writer wins; a duplicate stays uncached)."""
        if not self.enable_caching or block.block_hash is not None:
            return
        if block_hash in self._cached:
            return
        block.block_hash = block_hash
        self._cached[block_hash] = block

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference each; blocks reaching 0 join the free queue's tail in the given order."""
        for block in ordered_blocks:
            assert block.ref_cnt > 0, f"double free of {block}"
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.block_hash is None:
                    # Uncached blocks hold nothing reusable: put them first in line for reuse.
                    self._free[block.block_id] = block
                    self._free.move_to_end(block.block_id, last=False)
                else:
                    self._free[block.block_id] = block

    def reset_prefix_cache(self) -> bool:
        if self.num_used_blocks:
            return False
        for block in self.blocks:
            block.block_hash = None
        self._cached.clear()
        return True

    def check_invariants(self) -> None:
        free_ids = set(self._free)
        assert self.null_block is None or self.null_block.block_id not in free_ids, (
            "null block in the free queue"
        )
        for block in self.blocks:
            if block is self.null_block:
                continue
            in_free = block.block_id in free_ids
            assert in_free == (block.ref_cnt == 0), f"{block} free={in_free}"
            assert block.ref_cnt >= 0
        assert self.num_free_blocks + self.num_used_blocks == self.num_blocks
        for block_hash, block in self._cached.items():
            assert block.block_hash == block_hash
