#!/usr/bin/env bash
# Entrypoint of the platform image: writes the simple auth manager's passwords file (and the MLflow
# server's auth config) from the environment (so the admin password comes from .env, never from the image or the compose
# file), then runs the container's command.
set -euo pipefail

passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}"
if [[ -n "$passwords_file" && -n "${AIRFLOW_ADMIN_PASSWORD:-}" ]]; then
  mkdir -p "$(dirname "$passwords_file")"
  (umask 077 && python - "$passwords_file" <<'PY'
import json, os, sys
user = os.environ.get("AIRFLOW_ADMIN_USER", "admin")
with open(sys.argv[1], "w") as f:
    json.dump({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
PY
  )
fi

# The MLflow server's basic-auth config (promotion/tracking_auth.py): its user store's URI holds a
# password, so the file is written at start from the environment, never baked into the image.
if [[ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" && -n "${LCP_MLFLOW_AUTH_DATABASE_URI:-}" ]]; then
  python -m promotion.tracking_auth config --out "$MLFLOW_AUTH_CONFIG_PATH" \
    --database-uri "$LCP_MLFLOW_AUTH_DATABASE_URI" >/dev/null
fi

exec "$@"
