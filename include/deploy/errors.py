"""Why a deploy step refuses to change serving."""

from __future__ import annotations


class DeployError(RuntimeError):
    """A deploy step refused to change serving; the message says why and what to do."""


class DeployConflict(DeployError):
    """Another deploy holds the model's lock, or moved its labels while this one waited."""
