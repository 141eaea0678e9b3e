"""Production blue/green serving on ECS (Fargate) behind an Application Load Balancer.

The operations mirror the local process deployer (``start_slot``, ``stop_slot``,
``slot_health``) plus the traffic controls of the ALB, so the rollout controller can drive
either backend:

* each slot (``blue``, ``green``) is one ECS service ``<service_prefix>-<slot>`` registered in
  its own target group;
* a model version is a task definition revision whose serving container carries the model's
  artifact URI, sha256 and version as environment, and the serving token as an ECS ``secrets``
  reference (SSM Parameter Store or Secrets Manager), so the token value never appears in the
  task definition, in the ECS console or in our logs;
* the traffic split is the listener's default ``forward`` action with weighted target groups,
  which is what lets a rollout walk 0 -> 25 -> 50 -> 100.

Every boto3 failure is re-raised as :class:`~deploy_ops.slots.ecs.errors.DeploymentError`
naming the operation, the AWS API and the AWS error code, so sensors and the CLI can report it
without parsing botocore output.

Modules, one responsibility each:

* ``errors``: :class:`DeploymentError` (no boto3 import, so callers can catch it cheaply);
* ``config``: :class:`EcsDeployerConfig` (names of the AWS resources) and its input checks;
* ``status``: what ECS reports, judged (``EcsSlotStatus``, ``assess_service_stability``);
* ``aws``: the boto3 plumbing every operation goes through (clients, error translation,
  describe calls);
* ``provisioning``: task definition revisions and the two services;
* ``deployer``: runtime operations, :class:`EcsDeployer` (start, stop, health, the ALB's
  traffic weights);
* ``backend``: :class:`EcsBackend`, the slot backend the rollout controller drives.

No Dagster imports here: the CLI and the deployment assets call the same functions.
"""
