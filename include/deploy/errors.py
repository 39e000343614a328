"""Why a deploy step refuses to change serving. Every refusal is permanent: no retry can fix it."""

from __future__ import annotations

from include.core.errors import PermanentError


class DeployError(PermanentError):
    """A deploy step refused to change serving; the message says why and what to do."""


class DeployConflict(DeployError):
    """Another deploy holds the model's lock, or moved its labels while this one waited."""


class StatusRefused(DeployError):
    """The registry's status of the version does not allow the move (see registry.TRANSITIONS)."""


class ArtifactMismatch(DeployError):
    """The SavedModel's files are not the bytes the gate blessed (their hash differs, or none was recorded)."""


class SandboxRejected(DeployError):
    """The candidate crashed, hung or misbehaved in infra validation's sandbox server."""
