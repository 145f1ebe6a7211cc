#!/usr/bin/env bash
# One-shot init of the stack (the airflow-init service): migrates Airflow's metadata database,
# creates the Airflow tasks' account on the MLflow tracking server, and creates the DVC workspace
# with its default remote on S3 (MinIO), before any component starts. ingestion.versioning.init_workspace keeps an existing workspace and its remote.
set -euo pipefail

airflow db migrate

# the tasks' account on the MLflow server (basic-auth), with MANAGE on the model and experiment
python -m promotion.tracking_auth account --tracking-uri "${MLFLOW_TRACKING_URI:?}"

ws="${LCP_STATE_DIR:?}/workspace"
if [[ -n "${LCP_DVC_REMOTE_URL:-}" && ! -d "$ws/.dvc" ]]; then
  mkdir -p "$ws"
  cd "$ws"
  [[ -d .git ]] || git init -q -b main
  git config user.name listing-classifier-platform
  git config user.email platform@localhost
  python -m dvc init -q
  python -m dvc config core.analytics false
  python -m dvc remote add -d -f storage "$LCP_DVC_REMOTE_URL"
  if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then
    python -m dvc remote modify storage endpointurl "$AWS_ENDPOINT_URL"
  fi
  git add .dvc .dvcignore
  git commit -q -m "init DVC workspace (remote $LCP_DVC_REMOTE_URL)"
  echo "[init] DVC workspace $ws, remote $LCP_DVC_REMOTE_URL"
fi
