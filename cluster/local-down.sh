#!/usr/bin/env bash
# Stop the development cluster that cluster/local-up.sh started (and only that one): the Ray head
# and the MLflow server, each by the process group recorded in its pid file.
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${ITSTUDY_CLUSTER_DIR:-itstudy-runs/cluster}

stop_group() {  # stop_group NAME PIDFILE: SIGTERM the group's leader, SIGKILL what is left after 40 s
  local name=$1 pidfile=$2 pid
  [[ -f "$pidfile" ]] || return 0
  pid=$(cat "$pidfile")
  # The leader (`ray start --block`, `mlflow server`) shuts its own children down in order.
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 40); do
      kill -0 -- "-$pid" 2>/dev/null || break
      sleep 1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "stopped $name (process group $pid)"
  fi
  rm -f "$pidfile"
}
stop_group "MLflow server" "$STATE/mlflow.pid"
stop_group "Ray head" "$STATE/ray.pid"
rm -f "$STATE/env.sh"
if [[ -f "$STATE/ray-temp-dir" ]]; then
  rm -rf "$(cat "$STATE/ray-temp-dir")" "$STATE/ray-temp-dir"
fi
