"""The one error every ECS/ALB operation raises."""

from __future__ import annotations


class DeploymentError(RuntimeError):
    """A deployment operation failed; ``code`` is the AWS error code or our own failure code."""

    def __init__(self, operation: str, code: str, message: str, *, api: str | None = None):
        self.operation = operation
        self.code = code
        self.api = api
        self.detail = message
        where = f"{operation} ({api})" if api else operation
        super().__init__(f"{where} failed [{code}]: {message}")
