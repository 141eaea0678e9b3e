"""The errors a rollout raises."""

from __future__ import annotations


class RolloutError(RuntimeError):
    """A rollout could not run or could not be cleaned up; the message says what is left to do."""


class RolloutPreempted(RolloutError):
    """Another actor (an emergency rollback) closed this rollout's deployment row while it ran."""


class RetireError(RolloutError):
    """The new version was promoted and serves all traffic, but the old slot could not be stopped."""
