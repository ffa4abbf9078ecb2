"""The engine core's grammar state (vLLM V1's StructuredOutputManager, on llguidance).

A request with a grammar waits here, not in the scheduler, until its matcher is built on a worker thread (the
front end has already validated the grammar, so this is quick, but it never runs on the engine thread). Each of
its sequences then gets its own matcher: before a step, the rows that sample get their allowed-token bitmask;
after it, each matcher consumes the sampled token. A sequence whose grammar is complete is finished ("stop").
Matchers are dropped with their sequence, whatever ends it (finish, stop string, abort).

With a reasoning parser a sequence may first pass a gate (vLLM's structured outputs after reasoning): while the
model is inside its <think> block nothing is masked and the matcher consumes nothing; the grammar starts with the
token after "</think>". A gate that has not decided yet (qwen3: the model may or may not open the block) lets the
first token be the grammar's or the one that opens the block.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import KeysView
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from llguidance import LLMatcher, LLTokenizer

from pagedserve.core.scheduler_output import GrammarBitmask, ReasoningGate
from pagedserve.structured_output.grammar import build_ll_tokenizer

logger = logging.getLogger("pagedserve")

# Matchers in their start state, by grammar text; a new sequence takes a deep copy (~5 us) instead of a build.
TEMPLATE_CACHE_SIZE = 64


class StructuredOutputManager:
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.words_per_row = (vocab_size + 31) // 32
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-core")
        self._tokenizer: Future[LLTokenizer] | None = None
        self._templates: OrderedDict[str, LLMatcher] = OrderedDict()
        self._pending: dict[str, Future[LLMatcher]] = {}  # request id -> its matcher being built
        self._matchers: dict[str, LLMatcher] = {}  # seq id -> its matcher
        self._gates: dict[str, _Gate] = {}  # seq id -> its reasoning gate, until the reasoning is over

    # ---- set-up ------------------------------------------------------------------------------------------------
    def set_tokenizer(self, definition: str, eos_token_ids: list[int]) -> None:
        """The tokenizer's definition, sent once by the front end before its first grammar request."""
        if self._tokenizer is None:
            self._tokenizer = self._pool.submit(
                build_ll_tokenizer, definition, self.vocab_size, eos_token_ids
            )

    def submit(self, request_id: str, grammar: str) -> None:
        if self._tokenizer is None:
            raise RuntimeError("a grammar request arrived before the tokenizer definition")
        self._pending[request_id] = self._pool.submit(self._build, grammar)

    def _build(self, grammar: str) -> LLMatcher:
        template = self._templates.get(grammar)
        if template is None:
            assert self._tokenizer is not None
            template = LLMatcher(self._tokenizer.result(), grammar, log_level=0)
            if template.is_error():
                raise ValueError(template.get_error())
            self._templates[grammar] = template
            while len(self._templates) > TEMPLATE_CACHE_SIZE:
                self._templates.popitem(last=False)
        return template.deep_copy()

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def is_pending(self, request_id: str) -> bool:
        return request_id in self._pending

    def wait_for_pending(self, timeout: float) -> None:
        """Block up to `timeout` s for a build to finish (the core has nothing else to run)."""
        if self._pending:
            wait(list(self._pending.values()), timeout=timeout, return_when=FIRST_COMPLETED)

    def take_compiled(self) -> tuple[list[tuple[str, LLMatcher]], list[tuple[str, str]]]:
        """(request id, matcher) of the builds that finished, and (request id, error) of those that failed."""
        ready, failed = [], []
        for request_id, future in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[request_id]
            try:
                ready.append((request_id, future.result()))
            except Exception as error:  # a grammar llguidance rejects: that request fails, not the core
                logger.warning("grammar of request %s failed to build: %s", request_id, error)
                failed.append((request_id, str(error)))
        return ready, failed

    def cancel(self, request_id: str) -> bool:
        """Forget a request still waiting for its matcher; True if it was waiting."""
        future = self._pending.pop(request_id, None)
        if future is not None:
            future.cancel()
        return future is not None

    # ---- per sequence ------------------------------------------------------------------------------------------
    def add_sequence(self, seq_id: str, matcher: LLMatcher, gate: ReasoningGate | None = None) -> None:
        self._matchers[seq_id] = matcher
        if gate is not None:
            self._gates[seq_id] = _Gate(list(gate.end_token_ids), gate.start_token_id, gate.thinking)

    def is_thinking(self, seq_id: str) -> bool:
        """Inside its reasoning: no mask yet."""
        gate = self._gates.get(seq_id)
        return gate is not None and gate.thinking

    def has(self, seq_id: str) -> bool:
        return seq_id in self._matchers

    def bitmask(
        self, seq_ids: list[str], drafts: dict[str, list[int]] | None = None
    ) -> GrammarBitmask | None:
        """Allowed tokens of the constrained ones among `seq_ids` (the rows that sample this step). A sequence with
        draft tokens (speculative decoding) gets a row per position: the grammar's state after the draft tokens
        before it, up to the first draft token the grammar refuses (that position's row forbids it, so the draft is
        rejected there and the later positions are never kept). The matcher is rolled back afterwards."""
        rows = [seq_id for seq_id in seq_ids if seq_id in self._matchers and not self.is_thinking(seq_id)]
        if not rows:
            return None
        order: list[str] = []
        positions: list[int] = []
        for seq_id in rows:
            draft = (drafts or {}).get(seq_id, [])
            count = 1 + (self._matchers[seq_id].validate_tokens(draft) if draft else 0)
            order += [seq_id] * count
            positions += range(count)
        words = self.words_per_row
        masks = np.empty((len(order), words), dtype=np.int32)
        address = masks.ctypes.data
        for i, (seq_id, position) in enumerate(zip(order, positions)):
            matcher = self._matchers[seq_id]
            if position:
                matcher.consume_token(drafts[seq_id][position - 1])  # type: ignore[index]
            matcher.unsafe_compute_mask_ptr(address + i * words * 4, words * 4)
            if i + 1 == len(order) or order[i + 1] != seq_id:
                if position:
                    matcher.rollback(position)
            gate = self._gates.get(seq_id)
            if (
                gate is not None and gate.start_token_id is not None
            ):  # undecided: opening the block is allowed too
                word, bit = divmod(gate.start_token_id, 32)
                masks[i, word] |= np.int32(np.uint32(1 << bit).view(np.int32))
        drafted = len(order) != len(rows)
        return GrammarBitmask(order, words, masks.tobytes(), positions if drafted else None)

    def draft_prefix(self, seq_id: str, draft: list[int]) -> list[int]:
        """The part of a draft a sequence's grammar accepts from its current state (all of it when unconstrained);
        none while a reasoning gate is still deciding or watching (the gate reads tokens one by one)."""
        matcher = self._matchers.get(seq_id)
        if matcher is None or not draft:
            return draft
        if seq_id in self._gates:
            return []
        return draft[: matcher.validate_tokens(draft)]

    def accept(self, seq_id: str, token_id: int) -> bool:
        """Advance a sequence's matcher by its sampled token; True when its grammar is complete (or broken)."""
        matcher = self._matchers.get(seq_id)
        if matcher is None:
            return False
        gate = self._gates.get(seq_id)
        if gate is not None:
            if gate.thinking:
                gate.seen.append(token_id)
                if gate.seen[-len(gate.end_token_ids) :] == gate.end_token_ids:
                    del self._gates[seq_id]  # the reasoning is over: the grammar starts with the next token
                else:
                    del gate.seen[: -len(gate.end_token_ids)]  # only the tail can still end it
                return False
            del self._gates[seq_id]  # the first token decided
            if token_id == gate.start_token_id:
                self._gates[seq_id] = _Gate(gate.end_token_ids, None, True)
                return False
        if not matcher.consume_token(token_id):
            # Only when something outside the mask forced a token (min_tokens against a finished grammar).
            logger.warning("sequence %s left its grammar: %s", seq_id, matcher.get_error())
            return True
        return matcher.is_stopped()

    def free(self, seq_ids: list[str]) -> None:
        for seq_id in seq_ids:
            self._matchers.pop(seq_id, None)
            self._gates.pop(seq_id, None)

    @property
    def live_seq_ids(self) -> KeysView[str]:
        """The constrained sequences (a view: truthy when any)."""
        return self._matchers.keys()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class _Gate:
    end_token_ids: list[int]
    start_token_id: int | None  # set while undecided: the first token may open the block
    thinking: bool
    seen: list[int] = field(default_factory=list)  # the last tokens, to find the end sequence
