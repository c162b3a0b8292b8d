#!/usr/bin/env bash
# Launch path for a Ray cluster: start the head, join workers, submit the job.
#
#   scripts/cluster.sh head   [PORT] [RESOURCES_JSON]       # on the head node
#   scripts/cluster.sh worker HEAD_IP:PORT [RESOURCES_JSON]  # on every other node
#   scripts/cluster.sh submit HEAD_IP:PORT [key=value ...]   # the driver, anywhere in the cluster
#   scripts/cluster.sh stop                                  # on every node
#
# Placement is explicit in config: label nodes with custom resources (RESOURCES_JSON, e.g.
# '{"teacher_node": 1}') and ask for them per role, e.g.
#   +ray.teacher.resources.teacher_node=1 +ray.student.resources.trainer_node=1
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=.venv/bin/ray
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # trusted cluster network assumed
cmd=${1:?usage: cluster.sh head|worker|submit|stop ...}; shift || true
case "$cmd" in
  head)   $RAY start --head --port="${1:-6379}" --resources="${2:-{\}}" \
               --include-dashboard=false --disable-usage-stats ;;
  worker) $RAY start --address="${1:?HEAD_IP:PORT}" --resources="${2:-{\}}" --disable-usage-stats ;;
  submit) addr=${1:?HEAD_IP:PORT}; shift
          exec .venv/bin/python -m ondistill.main ray.address="$addr" "$@" ;;
  stop)   $RAY stop --force ;;
  *) echo "unknown command: $cmd" >&2; exit 2 ;;
esac
