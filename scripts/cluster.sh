#!/usr/bin/env bash
# Launch path for a Ray cluster: start the head, join workers, submit the job.
#
#   scripts/cluster.sh head   [PORT] [RESOURCES_JSON] [ray start args]       # on the head node
#   scripts/cluster.sh worker HEAD_IP:PORT [RESOURCES_JSON] [ray start args]  # every other node
#   scripts/cluster.sh submit HEAD_IP:PORT [key=value ...]   # the driver, anywhere in the cluster
#   scripts/cluster.sh stop                                  # on every node (stops all Ray here)
#
# Placement is explicit in config: label nodes with custom resources (RESOURCES_JSON, e.g.
# '{"teacher_node": 1}') and ask for them per role, e.g.
#   +ray.teacher.resources.teacher_node=1 +ray.student.resources.trainer_node=1
#
# Security: whoever reaches the head's port can run code on every node, so Ray's token
# authentication is on. `head` generates a token (~/.ray/auth_token) unless one is given;
# every worker and the submitting driver need the same token: copy that file to the same
# path on each machine, or export RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>)
# there. Opting out is explicit: ONDISTILL_RAY_AUTH=disabled (a trusted, closed network only).
# Bind to one interface with RAY_NODE_IP=<this node's address> (passed as --node-ip-address);
# the head listens on PORT plus Ray's internal ports on that address.
set -euo pipefail
cd "$(dirname "$0")/.."
RAY=.venv/bin/ray
if [ "${ONDISTILL_RAY_AUTH:-token}" = disabled ]; then
  echo "[cluster] token authentication disabled (ONDISTILL_RAY_AUTH=disabled): anyone who" \
       "reaches this node's Ray ports can run code on the cluster" >&2
  export RAY_AUTH_MODE=disabled
else
  export RAY_AUTH_MODE=token
fi
has_token() { [ -n "${RAY_AUTH_TOKEN:-}" ] || [ -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; }
need_token() {
  [ "$RAY_AUTH_MODE" = disabled ] || has_token || {
    echo "[cluster] no Ray auth token here: copy the head's ~/.ray/auth_token to this machine" \
         "(same path) or export RAY_AUTH_TOKEN=<token>; see the header of $0" >&2; exit 2; }
}
ip_args=()
[ -n "${RAY_NODE_IP:-}" ] && ip_args=(--node-ip-address="$RAY_NODE_IP")
cmd=${1:?usage: cluster.sh head|worker|submit|stop ...}; shift || true
case "$cmd" in
  head)   port=${1:-6379}; res=${2:-{\}}; shift $(( $# < 2 ? $# : 2 ))
          if [ "$RAY_AUTH_MODE" = token ] && ! has_token; then
            $RAY get-auth-token --generate >/dev/null
            echo "[cluster] generated a Ray auth token in ~/.ray/auth_token: give it to every" \
                 "worker and driver (same path, or RAY_AUTH_TOKEN)" >&2
          fi
          exec $RAY start --head --port="$port" --resources="$res" "${ip_args[@]}" \
               --include-dashboard=false --disable-usage-stats "$@" ;;
  worker) addr=${1:?HEAD_IP:PORT}; res=${2:-{\}}; shift $(( $# < 2 ? $# : 2 ))
          need_token
          exec $RAY start --address="$addr" --resources="$res" "${ip_args[@]}" \
               --disable-usage-stats "$@" ;;
  submit) addr=${1:?HEAD_IP:PORT}; shift
          need_token
          exec .venv/bin/python -m ondistill.main ray.address="$addr" "$@" ;;
  stop)   $RAY stop --force ;;
  *) echo "unknown command: $cmd" >&2; exit 2 ;;
esac
