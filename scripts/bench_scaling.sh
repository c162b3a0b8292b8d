#!/usr/bin/env bash
# The 8-GPU measurements (issue: scaling curve and the seed paper's pairs), ready to run on one
# node of N GPUs with the wheels staged as in docs/benchmarks.md (.gpu1/.gpu2, .gpuv1-.gpuv6):
#
#   bash scripts/bench_scaling.sh curve 8    # 1.7B <- 8B at 1, 2, 4, 8 GPUs, colocated
#   bash scripts/bench_scaling.sh pairs 8    # 4B <- 14B, 4B <- 32B, 1.7B <- 32B on 8 GPUs
#
# Each run writes $OUT/<name>.json (OUT defaults to ./bench_out). Weak scaling: 128 prompts x 2
# samples per GPU, 128 + 512 tokens (EOS ignored). The pairs: 128 sequences per step of up to
# 4,096 tokens (128-token prompts, 3,968 new tokens, EOS ignored, one sample each), colocated
# and split placement each, so the better one can be named.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?curve or pairs}
gpus=${2:-8}
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} VLLM_USE_FLASHINFER_SAMPLER=0
bench() { python scripts/bench_gpu.py --systems ondistill --steps 3 "$@"; }
if [ "$mode" = curve ]; then
  for n in 1 2 4 8; do
    [ "$n" -le "$gpus" ] || break
    bench --pair 1.7b-8b --gpus "$n" --prompts 128 --out "$OUT/curve_${n}gpu.json"
  done
else
  per_gpu=$((128 / gpus))
  for pair in 4b-14b 4b-32b 1.7b-32b; do
    for placement in colocated split; do
      teacher_gpus=$((gpus / 2))
      bench --pair "$pair" --gpus "$gpus" --placement "$placement" --teacher-gpus "$teacher_gpus" \
        --prompts "$per_gpu" --samples 1 --new-tokens 3968 --vllm-memory 0.2 \
        --teacher-micro 4 --student-micro 4 --out "$OUT/${pair}_${placement}.json"
    done
  done
fi
