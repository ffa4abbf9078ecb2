"""Log-probabilities returned to users: from the raw model logits, before any penalty or temperature."""

from __future__ import annotations

import torch


def gather_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_logprobs: int, scratch: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each row: the chosen token first, then the top num_logprobs tokens, most likely first.

    logits [N, V] (raw, any float dtype), token_ids [N] -> (ids [N, 1 + K] int64, logprobs [N, 1 + K] float32,
    ranks [N] int64) where rank 1 is the most likely token (tied tokens share the worse rank, as vLLM).
    scratch: an optional float32 [N, V] tensor to work in (its contents are overwritten).

    log_softmax(x)_i = x_i - logsumexp(x), and ranks and top-K are the same on logits as on logprobs, so only
    the 1 + K selected values are converted: no [N, V] log_softmax is written.
    """
    if scratch is None:
        scratch = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    token_ids = token_ids.to(torch.int64).unsqueeze(1)
    chosen = logits.gather(1, token_ids).float()
    max_logits = logits.amax(dim=-1, keepdim=True).float()
    log_normaliser = torch.sub(logits, max_logits, out=scratch).exp_().sum(dim=-1, keepdim=True).log_()
    log_normaliser.add_(max_logits)
    # Rank = how many tokens score at least the chosen one; ge_ on a float tensor writes 1.0 / 0.0 in place,
    # and float32 counts stay exact far beyond any vocabulary size.
    ranks = torch.sub(logits, chosen, out=scratch).ge_(0).sum(dim=-1).to(torch.int64)
    if num_logprobs == 0:
        return token_ids, chosen - log_normaliser, ranks
    top_logits, top_ids = logits.topk(num_logprobs, dim=-1, sorted=True)
    return (
        torch.cat([token_ids, top_ids], dim=1),
        torch.cat([chosen, top_logits.float()], dim=1).sub_(log_normaliser),
        ranks,
    )


def compute_prompt_logprobs(
    logits: torch.Tensor, target_token_ids: torch.Tensor, num_logprobs: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt logprobs: logits [N, V] at prompt positions 0..N-1, targets [N] = the prompt tokens 1..N.

    Returns (token_ids [N, 1 + K], logprobs [N, 1 + K], ranks [N]) with the target token first.
    """
    if logits.ndim != 2 or target_token_ids.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [N, V] and target_token_ids [N]; got {tuple(logits.shape)} and "
            f"{tuple(target_token_ids.shape)}."
        )
    if not 0 <= num_logprobs <= logits.shape[-1]:
        raise ValueError(f"num_logprobs must be in [0, {logits.shape[-1]}], got {num_logprobs}.")
    return gather_logprobs(logits, target_token_ids, num_logprobs)
