#!/usr/bin/env bash
# Run the multi_teacher recipe; extra key=value arguments override it (e.g. trainer.steps=10).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh
exec .venv/bin/python -m ondistill.main recipe=multi_teacher "$@"
