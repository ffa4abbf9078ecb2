"""Batched next-token sampling, vLLM V1 semantics.

Order: allowed_token_ids / bad_words / logit_bias -> min_tokens mask -> penalties -> greedy argmax -> temperature -> min_p -> top_k / top_p -> random draw;
logprobs come from the raw logits. Each optional stage runs only when some row of the batch needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedserve.ops import cpu as cpu_ops
from pagedserve.sample.filters import apply_min_p, apply_top_k_top_p
from pagedserve.sample.logprobs import gather_logprobs
from pagedserve.sample.metadata import SamplingMetadata
from pagedserve.sample.penalties import apply_min_tokens, apply_penalties


@dataclass
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [B] int64
    # None unless some row asked for logprobs. K is the largest number asked; a row that asked fewer reads its
    # first 1 + k columns. Rows that did not ask hold placeholders: their sampled id, NaN logprobs, rank 0.
    logprob_token_ids: torch.Tensor | None  # [B, 1 + K]: sampled token first, then the top-K
    logprobs: torch.Tensor | None  # [B, 1 + K] float32
    sampled_token_ranks: torch.Tensor | None  # [B] rank of the sampled token (1 = most likely)


class Sampler(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # A float32 scratch area kept across steps: a fresh [256, 49152] tensor is a new mmap on the CPU, and
        # faulting its pages in costs about as much as one pass over it. Not a registered buffer (no state).
        self._scratch: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """logits [B, V] in any float dtype; they are not modified."""
        if logits.ndim != 2 or logits.shape[0] != metadata.batch_size:
            raise ValueError(
                f"logits must be [B, V] with B = {metadata.batch_size} rows; got {tuple(logits.shape)}."
            )
        plain_greedy = metadata.all_greedy and metadata.no_logit_processing
        if not plain_greedy or metadata.max_num_logprobs is not None:
            # Softmax, top-k and the rest are fast in float32; a plain greedy argmax is exact on bf16 logits
            # (skipping this copy saves ~6 % of a batch-256 step).
            logits = logits.float()
        if plain_greedy:
            sampled = cpu_ops.argmax(logits) if logits.device.type == "cpu" else logits.argmax(dim=-1)
        else:
            sampled = self._sample(logits, metadata)

        if metadata.max_num_logprobs is None:
            return SamplerOutput(sampled, None, None, None)
        # From the raw logits: users see the model's distribution, not the processed one (vLLM's raw_logprobs).
        rows = metadata.logprob_rows
        # Sampling is done with the scratch area: the logprobs may reuse it.
        if rows is None:
            token_ids, token_logprobs, ranks = gather_logprobs(
                logits, sampled, metadata.max_num_logprobs, self._scratch_like(logits, logits.shape[0])
            )
            return SamplerOutput(sampled, token_ids, token_logprobs, ranks)
        # Only the rows that asked pay for the pass over the vocabulary; the others get placeholders.
        asked = gather_logprobs(
            logits[rows], sampled[rows], metadata.max_num_logprobs, self._scratch_like(logits, rows.shape[0])
        )
        width = 1 + metadata.max_num_logprobs
        token_ids = sampled.unsqueeze(1).repeat(1, width).index_copy_(0, rows, asked[0])
        token_logprobs = torch.full((sampled.shape[0], width), float("nan"), device=sampled.device)
        ranks = torch.zeros_like(sampled).index_copy_(0, rows, asked[2])
        return SamplerOutput(sampled, token_ids, token_logprobs.index_copy_(0, rows, asked[1]), ranks)

    def _sample(self, logits: torch.Tensor, metadata: SamplingMetadata) -> torch.Tensor:
        """Sample from logits without modifying them: the first change works on a float32 copy."""
        processed, owned = logits, False
        controls = metadata.token_controls
        if metadata.min_tokens_mask is not None or metadata.penalties is not None or controls is not None:
            processed, owned = self._scratch_like(logits, logits.shape[0]).copy_(logits), True
            if controls is not None:
                processed = controls.apply(processed)
            if metadata.min_tokens_mask is not None:
                processed = apply_min_tokens(processed, metadata.min_tokens_mask)
            if metadata.penalties is not None:
                processed = apply_penalties(processed, metadata.penalties)

        greedy = None
        if not metadata.all_random:
            # Greedy rows take the argmax of the penalised logits; temperature and filters cannot move it.
            greedy = processed.argmax(dim=-1)
            if metadata.all_greedy:
                return greedy

        # The random pipeline runs on the random rows only ([R, V]); metadata's per-row tensors are [R].
        assert metadata.temperature is not None, "a batch with random rows carries their temperatures"
        if metadata.random_rows is not None:
            # A new tensor (index_select, which could write into the scratch, is ~30x slower on the CPU).
            processed, owned = processed[metadata.random_rows], True
        temperature = metadata.temperature.unsqueeze(1)
        if owned:
            scaled = processed.div_(temperature)
        else:
            scaled = torch.div(processed, temperature, out=self._scratch_like(logits, logits.shape[0]))
        # Unnormalised probabilities with a maximum of exactly 1 per row: what the filters and the draw use.
        weights = scaled.sub_(scaled.amax(dim=-1, keepdim=True)).exp_()
        if metadata.min_p is not None:
            weights = apply_min_p(weights, metadata.min_p)
        if metadata.top_k is not None or metadata.top_p is not None:
            weights = apply_top_k_top_p(
                weights, metadata.top_k, metadata.top_p, metadata.max_top_k, metadata.truncated_rows
            )
        sampled = _draw(weights, metadata.generators)

        if greedy is None:
            return sampled
        assert metadata.random_rows is not None, "a mixed batch carries its random row indices"
        return greedy.index_copy_(0, metadata.random_rows, sampled)

    def _scratch_like(self, logits: torch.Tensor, num_rows: int) -> torch.Tensor:
        """A [num_rows, V] float32 view of the scratch area on logits' device (contents undefined)."""
        needed = num_rows * logits.shape[1]
        scratch = self._scratch
        if scratch is None or scratch.numel() < needed or scratch.device != logits.device:
            scratch = self._scratch = torch.empty(needed, dtype=torch.float32, device=logits.device)
        return scratch[:needed].view(num_rows, logits.shape[1])


def _draw(weights: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """One token per row of the unnormalised probabilities [R, V] (0 = removed), consumed in place.

    Inverse CDF: one uniform per row against the running sum of the weights. A seeded row draws its uniform
    from its own generator, exactly one per step, so its tokens depend only on its seed and its own logits,
    not on the batch around it. (Gumbel-max or the exponential race need V random numbers per row; on the CPU
    generating those costs several times the rest of the step.)
    """
    num_rows = weights.shape[0]
    cumulative = weights.cumsum_(dim=-1)
    uniform = torch.empty((num_rows, 1), dtype=torch.float32, device=weights.device)
    if len(generators) < num_rows:
        uniform.uniform_()  # rows without a seed share the default generator
    for row, generator in generators.items():
        uniform[row].uniform_(generator=generator)
    # Target in (0, total]: with side="left" the first token whose running sum reaches it is picked, which is
    # never a removed token (its running sum equals its predecessor's) and never past the last token.
    target = (1.0 - uniform).mul_(cumulative[:, -1:])
    sampled = torch.searchsorted(cumulative, target, side="left").squeeze(1)
    return sampled.clamp_(max=weights.shape[-1] - 1)
