#!/usr/bin/env bash
# Prepares KDFlow (the seed paper's system, songmzhang/KDFlow at 3a7a21a, brought as the git-ignored
# .kdflow/ folder, never part of this repository) for the lent GPU machine, which reaches no
# package index, for scripts/bench_vs_kdflow.py. Run from the checkout's root:
#   bash scripts/make_kdflow_carry.sh
# It fills one git-ignored folder (.gpuk/, covered by .gitignore's .gpu*/, ~32 MB):
#   the wheels KDFlow imports at module level that neither the image nor the ondistill/SGLang
#   carries have: datasets 4.8.5 (the version TRL already ran with there; it needs pyarrow >= 21,
#   pandas, xxhash, fsspec, aiohttp, huggingface-hub < 2, all in the image: device KINDS.md's
#   package list), multiprocess 0.70.19 with dill 0.4.1 (datasets' pins), torchdata 0.11.0
#   (StatefulDataLoader) and sglang-router 0.3.2 (KDFlow's rollout router, 30 MB of Rust);
#   kdflow.tar.xz (.kdflow/kdflow, unpatched) and install.sh.
# Not brought, as KDFlow needs them only behind flags this benchmark leaves off: flash-attn and
# ring-flash-attn (packing / ring attention), liger-kernel, wandb; torch_memory_saver (sleep/wake).
# On the GPU machine, after SGLang is installed in /tmp/sgl and ondistill's wheels in /tmp/site:
#   bash .gpuk/install.sh
# which installs the wheels with pip --no-index --no-deps --target /tmp/kdflow_site, adds a
# `soundfile` stand-in there (SGLang's HTTP server and mistral_common import it for audio only; the
# latter calls available_formats() at import, so the stand-in has that and nothing else), unpacks
# KDFlow to /tmp/kdflow and prints what KDFlow's path cannot import. KDFlow's processes then run
# with PYTHONPATH=/tmp/sgl:/tmp/kdflow_site:<patched copy>:/tmp/site (SGLang's transformers 5.8.1
# first: KDFlow's student imports SGLang too, for its weight sync); bench_vs_kdflow.py sets it.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
[ -f .kdflow/kdflow/__init__.py ] || {
  echo "no .kdflow/kdflow: git -C <KDFlow clone> archive 3a7a21a kdflow | tar -x -C .kdflow"; exit 1; }
git check-ignore -q .gpuk/ || { echo ".gpuk/ is not git-ignored: add .gpu*/ to .gitignore"; exit 1; }
rm -rf .gpuk && mkdir -p .gpuk
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d .gpuk \
  datasets==4.8.5 multiprocess==0.70.19 dill==0.4.1 torchdata==0.11.0 sglang-router==0.3.2
python3 - <<'PY'
import tarfile
with tarfile.open(".gpuk/kdflow.tar.xz", "w:xz") as t:
    t.add(".kdflow/kdflow", "kdflow", filter=lambda i: None if "__pycache__" in i.name else i)
PY
cat > .gpuk/install.sh <<'S'
set -e
here=$(cd "$(dirname "$0")" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/kdflow_site "$here"/*.whl
mkdir -p /tmp/kdflow_site/soundfile
printf 'def available_formats():\n    return {}\n' > /tmp/kdflow_site/soundfile/__init__.py
rm -rf /tmp/kdflow && mkdir -p /tmp/kdflow
python3 -c "import tarfile; tarfile.open('$here/kdflow.tar.xz').extractall('/tmp/kdflow', filter='fully_trusted')"
PYTHONPATH=/tmp/sgl:/tmp/kdflow_site:/tmp/kdflow:/tmp/site python3 - <<'PY'
import importlib
mods = ("datasets torchdata multiprocess dill sglang_router pyarrow pandas xxhash fsspec aiohttp "
        "requests peft PIL zmq ray sglang transformers")
bad = []
for m in mods.split():
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001 - list every failure, not the first
        bad.append(f"{m} ({type(e).__name__}: {e})")
if "transformers" not in " ".join(bad):
    import transformers
    print("KDFlow path: transformers", transformers.__version__, "(SGLang's 5.8.1 expected)")
print("KDFlow path cannot import:", "; ".join(bad) if bad else "nothing: ready (/tmp/kdflow)")
PY
S
du -sh .gpuk
