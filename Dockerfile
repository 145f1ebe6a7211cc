# One image for every Airflow component (api-server, scheduler, dag-processor, triggerer,
# Celery worker) and the MLflow tracking server: the project's pinned dependencies
# (requirements/dev.lock, resolved by uv) on Python 3.11. torch's PyPI wheels for Linux x86_64
# bundle the CUDA runtime, so the same image trains on the GPU a worker reserves.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    AIRFLOW_HOME=/opt/airflow \
    LCP_HOME=/opt/lcp \
    PYTHONPATH=/opt/lcp \
    GX_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    MLFLOW_ENABLE_TELEMETRY=false

# git: the DVC workspace is a git repository; tini: PID 1 that reaps Celery's children.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git tini \
    && rm -rf /var/lib/apt/lists/*

COPY requirements/dev.lock /tmp/requirements.lock
RUN pip install --no-cache-dir uv \
    && uv pip install --system -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock

# Runs from the source tree (not an installed wheel): the DVC stages snapshot common/ and
# training/ from it into the workspace (ingestion.versioning.sync_snapshot).
RUN useradd --create-home --uid 50000 --gid 0 airflow \
    && mkdir -p /opt/airflow /opt/lcp/state \
    && chown -R 50000:0 /opt/airflow /opt/lcp
WORKDIR /opt/lcp
COPY --chown=50000:0 pyproject.toml params.yaml dvc.yaml ./
COPY --chown=50000:0 catalogs/ catalogs/
COPY --chown=50000:0 common/ common/
COPY --chown=50000:0 ingestion/ ingestion/
COPY --chown=50000:0 validation/ validation/
COPY --chown=50000:0 training/ training/
COPY --chown=50000:0 promotion/ promotion/
COPY --chown=50000:0 monitoring/ monitoring/
COPY --chown=50000:0 scripts/ scripts/
COPY --chown=50000:0 dags/ dags/
COPY --chown=50000:0 plugins/ plugins/
COPY --chown=50000:0 docker/entrypoint.sh docker/airflow-init.sh /usr/local/bin/

USER 50000
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/entrypoint.sh"]
CMD ["airflow", "version"]
