"""Random weights for a model loaded without a checkpoint (--load-format dummy): norms at 1, the rest N(0, 0.02),
reproducible from the seed."""

from __future__ import annotations

import torch
from torch import nn


def init_dummy_weights(model: nn.Module, device: torch.device, seed: int) -> None:
    if device.type != "cpu":
        # Drawn on the device: the CPU's one generator draws ~150 M values/s, a minute for an 8B model.
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.fill_(1.0) if "norm" in name else param.normal_(0.0, 0.02, generator=generator)
        return
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                values = torch.randn(param.shape, generator=generator) * 0.02
                param.copy_(values.to(param.dtype))
