#!/usr/bin/env bash
# make ui: the Airflow UI (airflow standalone) and the MLflow UI on one state folder.
#
# Works from a plain shell: `airflow standalone` starts its components as a bare `airflow`
# command, so the venv's bin folder goes first on PATH here. Ctrl-C stops both UIs; the MLflow
# server is never left behind.
# Environment (set by the Makefile): VENV, STATE, AIRFLOW_PORT, MLFLOW_PORT, AIRFLOW_HOME.
set -euo pipefail
VENV="$(cd "${VENV:-.venv}" && pwd)"
export PATH="$VENV/bin:$PATH"
: "${STATE:?}" "${AIRFLOW_PORT:=8080}" "${MLFLOW_PORT:=5000}"
mkdir -p "$STATE/mlflow/artifacts"
airflow db migrate >/dev/null

pids=()
stop() {  # TERM to each UI's process group, KILL what is still there 20 s later
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 1 40); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

# each UI in its own process group (set -m), so that stop() ends its workers too
set -m
mlflow ui --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" \
  --default-artifact-root "$STATE/mlflow/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" \
  >"$STATE/mlflow/ui.log" 2>&1 &
pids+=($!)
# the workers reach the api-server's Task Execution API on the same port (default: 8080)
AIRFLOW__API__PORT="$AIRFLOW_PORT" \
  AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://localhost:$AIRFLOW_PORT/execution/" \
  airflow standalone &
pids+=($!)
set +m

passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
  Airflow UI  http://localhost:$AIRFLOW_PORT   user admin, password in $passwords
                                               (written by airflow standalone when it starts)
  MLflow UI   http://localhost:$MLFLOW_PORT   (log: $STATE/mlflow/ui.log)
  Ctrl-C stops both.
MSG
wait "${pids[1]}"
