"""The labeling use cases' errors; the transports map each to its status (HTTP 404/409/422,
gRPC NOT_FOUND/ABORTED/INVALID_ARGUMENT...)."""

from __future__ import annotations


class InvalidLabelError(ValueError):
    """A step the workflow does not allow in the frame's state (already final, not yet labeled...)."""


class ConflictError(RuntimeError):
    """Someone else got there first: the item is claimed, assigned to another person, or the label
    changed since the caller read it. Nothing was written; re-read and retry."""


class FrameNotFoundError(KeyError):
    """No result for this frame is in the ledger."""

    def __str__(self) -> str:
        return f"no result for frame {self.args[0]!r}" if self.args else "unknown frame"


class FieldError(ValueError):
    """A request field is invalid; `field` names it (`label`, `correction.severity`, ...)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class NotFoundError(KeyError):
    """No such label or sample."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"
