"""Serving slots: the slot names and roles, the backend protocol, and each backend beside its
deployer (local processes; ECS services behind an ALB)."""
