# The code-location image: the Dagster gRPC code server, and the image every run the
# EcsRunLauncher starts (the launcher runs each run in a task of the code location's image).
# The webserver and daemon services may use it too: it holds dagster-webserver and the instance.
#
# DAGSTER_HOME holds infra/dagster/dagster.yaml (PostgreSQL storage, EcsRunLauncher, S3 compute
# logs); every value it reads comes from the task's environment and secrets (DAGSTER_PG_*,
# DAGSTER_COMPUTE_LOG_BUCKET, the launcher's variables: infra/README.md). The production profile
# (AUTOTRADER_ENV=production) refuses to start with a missing or local store and lists what is
# wrong. AUTOTRADER_HOME is task scratch space only (dbt's target/ and profiles); the warehouse is on
# the EFS volume mounted at AUTOTRADER_WAREHOUSE_SHARED_DIR. No secret is baked in.
#
# Build from the repository root: docker build -f infra/docker/code-location.Dockerfile -t autotrader-code .
# Pinned base: Debian bookworm slim with CPython 3.11 (the project's tested interpreter).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    AUTOTRADER_HOME=/tmp/autotrader \
    AUTOTRADER_ENV=production

WORKDIR /app
COPY pyproject.toml README.md workspace.yaml ./
COPY autotrader_assets ./autotrader_assets
COPY deploy_ops ./deploy_ops
COPY dbt_project ./dbt_project
COPY infra/dagster/dagster.yaml /opt/dagster/home/dagster.yaml
# torch==2.13.0 from PyTorch's CPU index: the default index resolves the multi-GB CUDA build.
# The dbt manifest is built here (as `make dbt-parse` does), so runs never parse at start.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && cd dbt_project && dbt parse --quiet --profiles-dir . --target-path target && cd .. \
    && groupadd --system --gid 10001 autotrader \
    && useradd --system --uid 10001 --gid autotrader --no-create-home --shell /usr/sbin/nologin autotrader \
    && mkdir -p /tmp/autotrader \
    && chown -R autotrader:autotrader /tmp/autotrader /opt/dagster/home

USER 10001:10001
EXPOSE 4000

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["dagster", "api", "grpc-health-check", "--port", "4000"]

CMD ["dagster", "code-server", "start", "--host", "0.0.0.0", "--port", "4000", "--module-name", "autotrader_assets.definitions", "--location-name", "autotrader"]
