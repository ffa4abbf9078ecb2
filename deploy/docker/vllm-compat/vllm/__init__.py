"""Not vLLM: a stand-in so that manifests written for vLLM's image run pagedserve unchanged.

Only `python -m vllm.entrypoints.openai.api_server ...` (vLLM's image entrypoint before `vllm serve`, still used by
KServe's vLLM runtime and many manifests) is provided; it runs `pagedserve serve` with the same arguments. Copied
into pagedserve's container images only (deploy/docker/Dockerfile*), never installed by pip.
"""
