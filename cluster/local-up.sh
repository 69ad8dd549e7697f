#!/usr/bin/env bash
# Start a development cluster on this machine: a Ray head with token authentication and an
# MLflow tracking server on SQLite. Stop it with cluster/local-down.sh.
#
#   cluster/local-up.sh && source itstudy-runs/cluster/env.sh
#
# Settings (environment, all optional):
#   ITSTUDY_CLUSTER_DIR  state folder: pid files, logs, MLflow store (default itstudy-runs/cluster)
#   RAY_TEMP_DIR         Ray's session folder (default: a new /tmp/itstudy-ray-XXXXXX, removed by
#                        local-down.sh; Unix socket paths inside it must stay under 108 bytes)
#   RAY_PORT=6379  RAY_DASHBOARD_PORT=8265  MLFLOW_PORT=5000  RAY_NUM_CPUS=<all cores>
#   RAY_EXTRA_START_ARGS  more `ray start` flags (the tests pass free ports for every Ray service)
#   ITSTUDY_BIN          folder of the `ray`, `mlflow` and `python` to use (default .venv/bin)
#
# Why `ray start --block` in the background rather than plain `ray start`: the blocking process
# owns every Ray process of this head, so local-down.sh stops exactly this cluster with one
# SIGTERM. `ray stop` would stop every Ray process on the machine, other users' included.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$(cd "${ITSTUDY_BIN:-.venv/bin}" && pwd)
# Ray's processes inherit PATH: a job entrypoint's `python` is then this virtual environment's.
export PATH="$BIN:$PATH"
STATE=$(mkdir -p "${ITSTUDY_CLUSTER_DIR:-itstudy-runs/cluster}" && cd "${ITSTUDY_CLUSTER_DIR:-itstudy-runs/cluster}" && pwd)
RAY_PORT=${RAY_PORT:-6379}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
RAY_NUM_CPUS=${RAY_NUM_CPUS:-$(nproc)}

if [[ -f "$STATE/ray.pid" ]] && kill -0 "$(cat "$STATE/ray.pid")" 2>/dev/null; then
  echo "a cluster from $STATE is already running (pid $(cat "$STATE/ray.pid")); stop it with cluster/local-down.sh" >&2
  exit 1
fi
# A port that something already listens on (another Ray, another MLflow) would leave this cluster
# half up, or point its clients at another store: refuse it, naming the setting that moves it.
for setting in RAY_PORT RAY_DASHBOARD_PORT MLFLOW_PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/${!setting}") 2>/dev/null; then
    echo "port ${!setting} is taken (another Ray or MLflow on this machine?): choose a free one, e.g. $setting=$((${!setting} + 100)) cluster/local-up.sh" >&2
    exit 1
  fi
done
if [[ -z "${RAY_TEMP_DIR:-}" ]]; then
  RAY_TEMP_DIR=$(mktemp -d /tmp/itstudy-ray-XXXXXX)
  echo "$RAY_TEMP_DIR" >"$STATE/ray-temp-dir"  # made here, so local-down.sh removes it
fi

# Token authentication: every CLI client needs RAY_AUTH_MODE=token and the token in ~/.ray/auth_token.
# Ray writes that file readable by every local user (0644): this cluster's is its owner's only.
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
# Loopback only: with --node-ip-address=127.0.0.1 alone, Ray on Linux swaps in the machine's
# routable address and its servers listen on every interface; this variable (Ray's single-node
# mode, as on macOS) keeps 127.0.0.1, so GCS, raylet, object manager, agents, client server and
# workers listen there. Job drivers inherit it and join with the same address (itstudy/loopback.py).
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# On SIGTERM a head drains for 30 s by default (for Ray Serve replicas); a study cluster has
# nothing to hand over, so local-down.sh stops it at once.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}
(umask 077 && "$BIN/ray" get-auth-token --generate >/dev/null)
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then chmod 600 "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"; fi

# trial_driver: a custom resource that the drivers of multi-worker trials take instead of a CPU
# (a Tune trial's driver otherwise holds one CPU that its own Train workers then cannot use).
# MLFLOW_TRACKING_URI in the head's environment reaches every job driver: the one place that names
# the server's port (cluster/runtime_env.yaml does not).
MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT setsid "$BIN/ray" start --head --block --disable-usage-stats \
  --node-ip-address=127.0.0.1 --port="$RAY_PORT" --dashboard-port="$RAY_DASHBOARD_PORT" --dashboard-host=127.0.0.1 \
  --num-cpus="$RAY_NUM_CPUS" --resources='{"trial_driver": 16}' \
  --temp-dir="$RAY_TEMP_DIR" ${RAY_EXTRA_START_ARGS:-} \
  >"$STATE/ray.log" 2>&1 </dev/null &
echo $! >"$STATE/ray.pid"

# MLflow on SQLite with one worker (the default starts nine processes, about 1.4 GB); artifacts
# are served over HTTP so that clients anywhere upload through the server.
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$BIN/mlflow" server \
  --backend-store-uri "sqlite:///$STATE/mlflow.db" \
  --serve-artifacts --artifacts-destination "$STATE/mlartifacts" \
  --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
  >"$STATE/mlflow.log" 2>&1 </dev/null &
echo $! >"$STATE/mlflow.pid"

wait_for() {  # wait_for NAME PIDFILE LOG COMMAND...: poll COMMAND until it succeeds, while the process lives (90 s)
  local name=$1 pid log=$3; pid=$(cat "$2"); shift 3
  for _ in $(seq 90); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited during start-up; the end of $log:" >&2
      tail -5 "$log" >&2
      break
    fi
    sleep 1
  done
  echo "$name did not come up; see $log" >&2
  cluster/local-down.sh >&2 || true
  exit 1
}
wait_for "MLflow server" "$STATE/mlflow.pid" "$STATE/mlflow.log" curl -sf "http://127.0.0.1:$MLFLOW_PORT/health"
wait_for "Ray head" "$STATE/ray.pid" "$STATE/ray.log" "$BIN/ray" job list --address "http://127.0.0.1:$RAY_DASHBOARD_PORT"
# The dashboard answering is not enough: jobs run through the head's dashboard agent, which may
# have failed to bind its ports. A job that runs `true` proves the whole submission path.
check_job=itstudy-up-check-$(date +%s)
if ! "$BIN/ray" job submit --address "http://127.0.0.1:$RAY_DASHBOARD_PORT" --submission-id "$check_job" -- true >"$STATE/up-check.log" 2>&1; then
  echo "Ray head is up but cannot run jobs (its dashboard agent did not start?); the end of $STATE/up-check.log:" >&2
  tail -3 "$STATE/up-check.log" >&2
  cluster/local-down.sh >&2 || true
  exit 1
fi
"$BIN/ray" job delete --address "http://127.0.0.1:$RAY_DASHBOARD_PORT" "$check_job" >/dev/null 2>&1 || true

cat >"$STATE/env.sh" <<ENV
export RAY_ADDRESS=http://127.0.0.1:$RAY_DASHBOARD_PORT
export RAY_AUTH_MODE=token
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
ENV
echo "Ray dashboard  http://127.0.0.1:$RAY_DASHBOARD_PORT   (sessions and logs in $RAY_TEMP_DIR)"
echo "MLflow UI      http://127.0.0.1:$MLFLOW_PORT"
echo "Next:          source $STATE/env.sh   (then submit a study: cluster/README.md)"
