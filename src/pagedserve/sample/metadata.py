"""What the sampler needs to know about one step's batch, turned into tensors once per step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pagedserve.sample.penalties import PenaltyTensors
from pagedserve.sample.token_controls import TokenControls
from pagedserve.sampling_params import SamplingParams

# Below this temperature a row is sampled greedily (same threshold as SamplingParams.greedy and vLLM).
SAMPLING_EPS = 1e-5


@dataclass
class SamplingRow:
    """What the model runner knows about one sequence this step."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # generated so far, before this step's token
    generator: torch.Generator | None = None  # per-sequence generator when params.seed is set


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """The per-sequence generator for a seeded request; it lives on the device the logits live on."""
    generator = torch.Generator(device=device)
    # torch seeds are unsigned 64-bit; fold negative seeds (allowed by SamplingParams) into that range.
    generator.manual_seed(seed % 2**64)
    return generator


@dataclass
class SamplingMetadata:
    """Per-step sampling state of a batch of B rows, R of which are random (temperature > 0).

    The temperature and filter tensors cover the random rows only, in batch order, so that a mixed batch
    runs the random pipeline on [R, V] rather than [B, V]. Optional parts are None when no row needs them,
    which lets the sampler skip whole passes over the logits.
    """

    all_greedy: bool
    all_random: bool
    random_rows: torch.Tensor | None  # [R] int64 batch indices of the random rows; None unless mixed
    temperature: torch.Tensor | None  # [R] float32; None when all_greedy
    top_k: torch.Tensor | None  # [R] int64 in [1, V]; V where the row has no top-k
    max_top_k: int  # largest top-k below V among random rows (0 when top_k is None): sizes torch.topk
    top_p: torch.Tensor | None  # [R] float32 in (0, 1]; 1.0 where the row has no top-p
    # [F] positions among the random rows that use top-k or top-p; None when all of them do (or none).
    truncated_rows: torch.Tensor | None
    min_p: torch.Tensor | None  # [R] float32 in [0, 1]; 0.0 where the row has no min-p
    generators: dict[int, torch.Generator]  # position among the random rows -> that row's seeded generator
    penalties: PenaltyTensors | None
    # (batch row indices, token ids) to set to -inf: stop tokens of rows still short of min_tokens.
    min_tokens_mask: tuple[torch.Tensor, torch.Tensor] | None
    token_controls: TokenControls | None  # allowed_token_ids, bad_words, logit_bias
    max_num_logprobs: int | None  # largest `logprobs` asked by any row; None when none asks
    logprob_rows: torch.Tensor | None  # [L] batch indices of the rows that ask; None when all do (or none)
    batch_size: int = field(default=0)
    # Some rows' logits hold a grammar's -inf mask (structured outputs): not for the bf16 C argmax.
    grammar_masked: bool = False

    @property
    def no_logit_processing(self) -> bool:
        """Nothing changes the logits before the argmax: the all-greedy hot path."""
        return (
            self.penalties is None
            and self.min_tokens_mask is None
            and self.token_controls is None
            and not self.grammar_masked
        )

    @classmethod
    def build(cls, rows: list[SamplingRow], vocab_size: int, device: torch.device | str) -> SamplingMetadata:
        if not rows:
            raise ValueError("rows must hold at least one row.")
        greedy = [row.params.temperature < SAMPLING_EPS for row in rows]
        random_rows = [index for index, is_greedy in enumerate(greedy) if not is_greedy]
        all_greedy = not random_rows
        all_random = len(random_rows) == len(rows)
        # Filters only matter for random rows: a greedy row's argmax survives all of them.
        params = [rows[index].params for index in random_rows]

        def tensor(values: list[float] | list[int] | list[bool], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        top_k_values = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        max_top_k = max((k for k in top_k_values if k < vocab_size), default=0)
        uses_top_p = any(p.top_p < 1.0 for p in params)
        truncated = [
            i for i, (p, k) in enumerate(zip(params, top_k_values)) if k < vocab_size or p.top_p < 1.0
        ]
        logprob_rows = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
        logprob_counts = [rows[i].params.logprobs for i in logprob_rows]
        return cls(
            all_greedy=all_greedy,
            all_random=all_random,
            random_rows=None if all_greedy or all_random else tensor(random_rows, torch.int64),
            temperature=None if all_greedy else tensor([float(p.temperature) for p in params], torch.float32),
            top_k=tensor(top_k_values, torch.int64) if max_top_k else None,
            max_top_k=max_top_k,
            top_p=tensor([float(p.top_p) for p in params], torch.float32) if uses_top_p else None,
            truncated_rows=(
                tensor(truncated, torch.int64) if truncated and len(truncated) < len(params) else None
            ),
            min_p=(
                tensor([float(p.min_p) for p in params], torch.float32)
                if any(p.min_p > SAMPLING_EPS for p in params)
                else None
            ),
            generators={
                position: rows[index].generator
                for position, index in enumerate(random_rows)
                if rows[index].generator is not None
            },
            penalties=PenaltyTensors.build(rows, vocab_size, device),
            min_tokens_mask=_build_min_tokens_mask(rows, vocab_size, device),
            token_controls=TokenControls.build(rows, vocab_size, device),
            max_num_logprobs=max(logprob_counts) if logprob_counts else None,
            logprob_rows=(
                tensor(logprob_rows, torch.int64) if logprob_rows and len(logprob_rows) < len(rows) else None
            ),
            batch_size=len(rows),
        )


def _build_min_tokens_mask(
    rows: list[SamplingRow], vocab_size: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    row_indices: list[int] = []
    token_ids: list[int] = []
    for index, row in enumerate(rows):
        if len(row.output_token_ids) >= row.params.min_tokens:
            continue
        # EOS too under ignore_eos: min_tokens means that many tokens before any EOS (vLLM's rule).
        for token_id in sorted(row.params.all_stop_token_ids | row.params.eos_token_ids):
            if 0 <= token_id < vocab_size:  # a stop id past the model's vocabulary can never be sampled
                row_indices.append(index)
                token_ids.append(token_id)
    if not row_indices:
        return None
    return (
        torch.tensor(row_indices, dtype=torch.int64, device=device),
        torch.tensor(token_ids, dtype=torch.int64, device=device),
    )
