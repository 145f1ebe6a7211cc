#!/usr/bin/env bash
# make ui: the Airflow UI and the MLflow UI on one state folder.
#
# Airflow's components are started one by one, as `airflow standalone` would (LocalExecutor,
# the simple auth manager, which writes the admin's password when the api-server starts), but
# the scheduler, dag-processor and triggerer only once the api-server answers its health check:
# started together, the scheduler began the weekly run before the api-server listened, and the
# first ingest try failed with "Connection refused".
# Ctrl-C, TERM or a closed terminal (HUP) stops everything it started, the tasks' processes
# included (each task runs in a process group of its own, with `dvc repro` and training below it),
# and marks the task instances and DAG runs they leave unfinished failed (scripts/stop_airflow.py).
# Each component runs in a session of its own (setsid): the signal reaches only make and this
# script, whose stop finds every process of a component's session (a task whose supervisor died
# first included) before it signals any of them, instead of the components dying in an order
# that re-parents their tasks out of reach.
# Works from a plain shell: the components are bare `airflow` commands, so the venv's bin folder
# goes first on PATH here.
# Environment (set by the Makefile): VENV, STATE, AIRFLOW_PORT, MLFLOW_PORT, AIRFLOW_HOME.
set -euo pipefail
VENV="$(cd "${VENV:-.venv}" && pwd)"
HERE="$(cd "$(dirname "$0")" && pwd)"
export PATH="$VENV/bin:$PATH"
: "${STATE:?}" "${AIRFLOW_PORT:=8080}" "${MLFLOW_PORT:=5000}" "${UI_START_TIMEOUT:=180}"
mkdir -p "$STATE/mlflow/artifacts" "$AIRFLOW_HOME/logs"
airflow db migrate >/dev/null
# the workers reach the api-server's Task Execution API on the same port
export AIRFLOW__API__PORT="$AIRFLOW_PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://localhost:$AIRFLOW_PORT/execution/"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"

pids=()
stop() {  # every process below the ones started here; unfinished tasks and runs marked failed
  # INT, TERM and HUP ignored while stopping, here and (inherited) in stop_airflow.py: GNU make, on a
  # TERM, sends this script a second one, and an impatient user presses Ctrl-C again; with the
  # traps merely reset, that second signal killed the shell before it started the stop, and the
  # running task stayed "running" in the metadata DB
  trap '' INT TERM HUP
  trap - EXIT
  [ "${#pids[@]}" -gt 0 ] || return 0
  echo "stopping the UIs and their tasks ..."
  args=()
  for pid in "${pids[@]}"; do args+=(--pid "$pid"); done
  "$VENV/bin/python" "$HERE/stop_airflow.py" "${args[@]}" --grace 20 || true
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

start() {  # start LOG COMMAND...: in the background, in a session of its own, output appended to LOG
  local log="$1"; shift
  setsid "$@" >>"$log" 2>&1 </dev/null &
  pids+=($!)
}
start "$STATE/mlflow/ui.log" mlflow ui --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" \
  --default-artifact-root "$STATE/mlflow/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT"
start "$AIRFLOW_HOME/logs/api-server.log" airflow api-server --port "$AIRFLOW_PORT"

health="http://localhost:$AIRFLOW_PORT/api/v2/monitor/health"
healthy() { python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$health" 2>/dev/null; }
deadline=$((SECONDS + UI_START_TIMEOUT))
until healthy; do
  kill -0 "${pids[1]}" 2>/dev/null || { echo "the api-server ended; see $AIRFLOW_HOME/logs/api-server.log" >&2; exit 1; }
  [ "$SECONDS" -lt "$deadline" ] || { echo "the api-server did not answer $health within ${UI_START_TIMEOUT}s" >&2; exit 1; }
  sleep 1
done
for component in scheduler dag-processor triggerer; do
  start "$AIRFLOW_HOME/logs/$component.log" airflow "$component"
done

passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
  Airflow UI  http://localhost:$AIRFLOW_PORT   user admin, password in $passwords
  MLflow UI   http://localhost:$MLFLOW_PORT   (log: $STATE/mlflow/ui.log)
  Logs        $AIRFLOW_HOME/logs/{api-server,scheduler,dag-processor,triggerer}.log
  Ctrl-C stops both, with any task they run.
MSG
# returns when a component ends (or a signal arrives): then everything is stopped
wait -n "${pids[@]}" || true
echo "a component ended; stopping the others" >&2
