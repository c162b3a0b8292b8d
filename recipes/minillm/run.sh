#!/usr/bin/env bash
# Run the minillm recipe; extra key=value arguments override it (e.g. trainer.steps=60).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
exec .venv/bin/python -m ondistill.main recipe=minillm "$@"
