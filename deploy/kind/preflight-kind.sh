#!/usr/bin/env bash
# Run `pagedserve preflight` against a real API server in kind (needs docker, kind, kubectl, pagedserve).
#   deploy/kind/preflight-kind.sh          create the cluster, fake a GPU node, run both checks, keep the cluster
#   KEEP_CLUSTER=0 deploy/kind/preflight-kind.sh   ... and delete the cluster at the end
# Expected: CPU-mode values exit 0; GPU-mode values exit 1 (no GPU operator in kind).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cluster=pagedserve-preflight
kubeconfig="${KUBECONFIG_OUT:-$(mktemp -t pagedserve-kind-kubeconfig.XXXXXX)}"

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --config "$here/kind-config.yaml" --wait 120s
fi
kind get kubeconfig --name "$cluster" > "$kubeconfig"
export KUBECONFIG="$kubeconfig"

worker="$(kubectl get nodes -l '!node-role.kubernetes.io/control-plane' -o jsonpath='{.items[0].metadata.name}')"
# What the GPU operator's feature discovery would set; no CUDA labels, so cuda-driver warns as on a real
# cluster without GFD. The capacity patch is the documented way to advertise an extended resource.
kubectl label node "$worker" --overwrite nvidia.com/gpu.present=true nvidia.com/gpu.product=NVIDIA-A10G
kubectl patch node "$worker" --subresource=status --type=json \
  -p '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "2"}]'

status=0
echo "== CPU mode (expect exit 0)"
pagedserve preflight --kubeconfig "$kubeconfig" --values "$here/values-cpu.yaml" || status=$?
[ "$status" -eq 0 ] || { echo "CPU mode: expected exit 0, got $status"; exit 1; }

status=0
echo "== GPU mode without a GPU operator (expect exit 1)"
pagedserve preflight --kubeconfig "$kubeconfig" --values "$here/values-gpu.yaml" || status=$?
[ "$status" -eq 1 ] || { echo "GPU mode: expected exit 1, got $status"; exit 1; }

if [ "${KEEP_CLUSTER:-1}" = "0" ]; then
  kind delete cluster --name "$cluster"
fi
echo "kind preflight: both runs gave the expected exit codes"
