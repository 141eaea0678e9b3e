# The serving image: one slot of the blue/green serving services on ECS (Fargate).
#
# The container's command is `python -m deploy_ops.serving` with no arguments: the entrypoint
# (deploy_ops/serving/container.py) reads exactly what the ECS task definition passes
# (AUTOTRADER_MODEL_URI, AUTOTRADER_MODEL_SHA256, AUTOTRADER_MODEL_VERSION, AUTOTRADER_SLOT and the
# AUTOTRADER_SERVING_TOKEN secret), fetches the bundle from S3 with the task role, verifies its
# sha256 and serves on port 8080. Nothing secret is baked in: the token arrives as an ECS secret.
#
# Build from the repository root: docker build -f infra/docker/serving.Dockerfile -t autotrader-serving .
# Pinned base: Debian bookworm slim with CPython 3.11 (the project's tested interpreter).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AUTOTRADER_MODEL_DIR=/tmp/model

WORKDIR /app
COPY pyproject.toml README.md ./
COPY autotrader_assets ./autotrader_assets
COPY deploy_ops ./deploy_ops
# torch==2.13.0 from PyTorch's CPU index: the default index resolves the multi-GB CUDA build.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . \
    && groupadd --system --gid 10001 autotrader \
    && useradd --system --uid 10001 --gid autotrader --no-create-home --shell /usr/sbin/nologin autotrader

USER 10001:10001
EXPOSE 8080

# Liveness only (/health never touches the model); the ALB's target group checks /ready.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status == 200 else 1)"]

CMD ["python", "-m", "deploy_ops.serving"]
