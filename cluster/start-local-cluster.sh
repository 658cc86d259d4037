#!/usr/bin/env bash
# Start (or stop) a multi-node Ray cluster on this machine: a thin wrapper over local_cluster.py.
#   cluster/start-local-cluster.sh [--workers 2] [--cpus 1] [--node-resources 2='{"gpu_node": 1}']
#   cluster/start-local-cluster.sh stop
#   PYTHON=/path/to/venv/bin/python cluster/start-local-cluster.sh ...   (a Python that has Ray)
# Every other subcommand (status, env, add-node, kill-node) passes through; see local_cluster.py --help.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/../.venv/bin/python" ]]; then python="$here/../.venv/bin/python"; else python="python3"; fi
fi
[[ $# -eq 0 ]] && set -- start
case "$1" in
  start|stop|status|env|add-node|kill-node) exec "$python" "$here/local_cluster.py" "$@" ;;
  *) exec "$python" "$here/local_cluster.py" start "$@" ;;
esac
