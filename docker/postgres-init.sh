#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is empty (docker-entrypoint-initdb.d): one database
# for Airflow's metadata and one for MLflow's backend store, both owned by $POSTGRES_USER.
set -euo pipefail
for db in "${AIRFLOW_DB:?}" "${MLFLOW_DB:?}"; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\";"
done
