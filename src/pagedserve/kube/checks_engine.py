"""Values the engine in this image would refuse at startup, caught before the install with the engine's reason
(a pod that exits at startup only shows up as CrashLoopBackOff)."""

from __future__ import annotations

from pagedserve.kube.chart_values import DeploymentNeeds
from pagedserve.kube.report import CheckResult, Status
from pagedserve.model_config import QUANTIZATION_CHOICES


def check_engine_values(needs: DeploymentNeeds) -> CheckResult:
    seen = (
        f"engine.tensorParallelSize {needs.tensor_parallel_size}, "
        f"engine.quantization {needs.quantization or '(from the checkpoint)'}"
    )
    if not needs.known:
        seen = "no values file: the chart's defaults (tensorParallelSize 1, quantization from the checkpoint)"
    required = (
        f"tensorParallelSize 1 with GPUs (any size in CPU mode); quantization unset or one of "
        f"{', '.join(QUANTIZATION_CHOICES)}"
    )
    refused = []
    if needs.tensor_parallel_size != 1 and needs.gpu_enabled:
        # The ranks' collectives run over gloo on CPUs (tested); the NCCL path has never run on a GPU.
        refused.append(
            "this image runs tensor_parallel_size > 1 on CPUs only (gloo): its CUDA path (NCCL) has not been "
            "verified on a GPU; serve the model on one GPU per replica, or use a vLLM image for this values file"
        )
    if needs.quantization not in ("", *QUANTIZATION_CHOICES):
        refused.append(
            f"the engine refuses quantization {needs.quantization!r} (not supported yet; it runs GGUF files from "
            "their blocks, compressed-tensors, AWQ, GPTQ and fp8 checkpoints, float ones quantized to fp8 at load, "
            "and unquantized ones)"
        )
    if refused:
        return CheckResult("engine-values", Status.FAIL, seen + ": " + "; ".join(refused), required,
                           "edit engine.* in the values file (docs/deploy.md, values reference)")  # fmt: skip
    return CheckResult("engine-values", Status.PASS, seen, required)
