"""The serving container's entrypoint: the ECS task definition's environment -> a serving process.

The ECS deployer (``deploy_ops/slots/ecs/provisioning.py``) registers one task definition
revision per model and slot; its container gets exactly these variables, and nothing else is
needed to serve:

============================  ===============================================================
``AUTOTRADER_MODEL_URI``      the bundle, ``s3://bucket/key`` (the registry's artifact URI)
``AUTOTRADER_MODEL_SHA256``   its sha256 from the registry; the download is refused on mismatch
``AUTOTRADER_MODEL_VERSION``  the registry version served (``/ready`` and metrics report it)
``AUTOTRADER_SLOT``           ``blue`` or ``green``
``AUTOTRADER_SERVING_TOKEN``  the bearer token, an ECS ``secrets`` reference resolved at start;
                              required: production serving is never unauthenticated
============================  ===============================================================

Optional, through the deployer's ``extra_environment``: ``AUTOTRADER_SERVING_PORT`` (default
8080, the deployer's ``container_port``), ``AUTOTRADER_INSTRUMENTS`` (the instruments answered
for; default any), ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, and an S3 endpoint override
``AUTOTRADER_S3_ENDPOINT_URL`` (boto3's ``AWS_ENDPOINT_URL`` works too, boto3 reads it itself).

This is the one module of ``deploy_ops`` that reads the process environment (allowed in
``tests/unit/test_dependency_rules.py``): a container has no other way to receive the task
definition's contract. It reads it once, in :func:`main`, and hands a plain mapping to
:func:`plan_from_environment`, which maps it to the command line of :mod:`deploy_ops.serving.app`.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from deploy_ops.models.artifacts import ArtifactNotFoundError, LocalArtifactStore, S3ArtifactStore, parse_s3_uri
from deploy_ops.models.bundle import ArtifactIntegrityError
from deploy_ops.slots.names import SLOTS

logger = logging.getLogger("deploy_ops.serving.container")

MODEL_URI, MODEL_SHA256, MODEL_VERSION, SLOT, TOKEN = (
    "AUTOTRADER_MODEL_URI",
    "AUTOTRADER_MODEL_SHA256",
    "AUTOTRADER_MODEL_VERSION",
    "AUTOTRADER_SLOT",
    "AUTOTRADER_SERVING_TOKEN",
)
REQUIRED = (MODEL_URI, MODEL_SHA256, MODEL_VERSION, SLOT, TOKEN)
DEFAULT_PORT = 8080
#: Where the downloaded bundle is kept for the life of the task (the task's own scratch disk).
MODEL_DIR_ENV = "AUTOTRADER_MODEL_DIR"


class ContainerConfigError(ValueError):
    """The task's environment is not what the task definition promises (exit code 2)."""


@dataclass(frozen=True)
class ContainerPlan:
    """What the container will do: fetch ``model_uri``, then run the app with ``argv``."""

    model_uri: str
    sha256: str
    version: str
    slot: str
    port: int
    token: str
    region: str
    s3_endpoint_url: str | None
    instruments: str | None
    model_dir: str

    def argv(self, model_path: str) -> list[str]:
        args = [
            "--model",
            model_path,
            "--sha256",
            self.sha256,
            "--version",
            self.version,
            "--slot",
            self.slot,
            # 0.0.0.0: in awsvpc mode the ALB reaches the task on its own ENI address.
            "--host",
            "0.0.0.0",
            "--port",
            str(self.port),
            "--require-token",
        ]
        if self.instruments:
            args += ["--instruments", self.instruments]
        return args


def plan_from_environment(environ: Mapping[str, str]) -> ContainerPlan:
    """Map the task environment to a plan; every problem is listed at once."""
    get = lambda name: (environ.get(name) or "").strip()  # noqa: E731
    problems = [f"{name} is not set" for name in REQUIRED if not get(name)]
    slot, sha = get(SLOT), get(MODEL_SHA256).lower()
    if slot and slot not in SLOTS:
        problems.append(f"{SLOT}={slot!r} is not one of {', '.join(SLOTS)}")
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        problems.append(f"{MODEL_SHA256} is not a sha256 hex digest")
    port_raw = get("AUTOTRADER_SERVING_PORT") or str(DEFAULT_PORT)
    try:
        port = int(port_raw)
        if not 1 <= port <= 65535:
            raise ValueError
    except ValueError:
        problems.append(f"AUTOTRADER_SERVING_PORT={port_raw!r} is not a port number")
        port = DEFAULT_PORT
    if problems:
        raise ContainerConfigError("the serving container cannot start: " + "; ".join(problems))
    return ContainerPlan(
        model_uri=get(MODEL_URI),
        sha256=sha,
        version=get(MODEL_VERSION),
        slot=slot,
        port=port,
        token=get(TOKEN),
        region=get("AWS_REGION") or get("AWS_DEFAULT_REGION") or "us-east-1",
        s3_endpoint_url=get("AUTOTRADER_S3_ENDPOINT_URL") or None,
        instruments=get("AUTOTRADER_INSTRUMENTS") or None,
        model_dir=get(MODEL_DIR_ENV) or tempfile.gettempdir(),
    )


def fetch_model(plan: ContainerPlan) -> Path:
    """Download the bundle, verify its sha256 against the registry's, write it for the app.

    The app verifies the file again when it loads it; the check here makes a wrong or corrupt
    artifact fail the task at start (ECS's deployment circuit breaker then fails the rollout)
    instead of leaving a task that never becomes ready.
    """
    if plan.model_uri.startswith("s3://"):
        bucket, _ = parse_s3_uri(plan.model_uri)
        store = S3ArtifactStore(bucket, region=plan.region, endpoint_url=plan.s3_endpoint_url)
    else:
        store = LocalArtifactStore(plan.model_dir)  # a file path or file:// URI (tests, local images)
    data = store.get(plan.model_uri, plan.sha256)
    folder = Path(plan.model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{plan.sha256}.pt"
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    logger.info(
        "fetched model version %s (%d bytes, sha256 %s) from %s", plan.version, len(data), plan.sha256, plan.model_uri
    )
    return path


def run(environ: Mapping[str, str]) -> int:
    """Plan, fetch, serve. Exit code 2 for a bad environment or a model that cannot be fetched."""
    logging.basicConfig(
        level="INFO", stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
    )
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        plan = plan_from_environment(environ)
        model_path = fetch_model(plan)
    except (ContainerConfigError, ArtifactNotFoundError, ArtifactIntegrityError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    except (BotoCoreError, ClientError) as exc:  # S3 unreachable, access denied: the task fails at start
        logger.error("cannot fetch the model from %s: %s", plan.model_uri, exc)
        return 2
    from deploy_ops.serving.app import main as serve

    return serve(plan.argv(str(model_path)), token=plan.token)


def main() -> int:
    return run(os.environ)
