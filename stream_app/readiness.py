"""The worker's readiness (`/ready`): a model is served, and delivery and commits progress.

Not ready, with one reason, when no model is served yet, when the worker halted, when the oldest
output has waited for an acknowledgement longer than `GMM_DELIVERY_STUCK_S`, when offset commits
have failed that long, or when a batch has been in flight twice that long.
"""

from __future__ import annotations

from typing import Any

from stream_app.checkpoint import Checkpoint
from stream_app.delivery import Delivery
from stream_app.model_state import ModelHolder


class Readiness:
    """`check()` gives (ready, details) from the served model, delivery and the checkpoint."""

    def __init__(
        self,
        model_name: str,
        stuck_limit_s: float,
        holder: ModelHolder,
        delivery: Delivery,
        checkpoint: Checkpoint,
    ) -> None:
        self.model_name = model_name
        self.stuck_limit_s = stuck_limit_s
        self.holder = holder
        self.delivery = delivery
        self.checkpoint = checkpoint

    def check(self) -> tuple[bool, dict[str, Any]]:
        current = self.holder.current
        if current is None:
            return False, {"ready": False, "reason": "no model yet"}
        details: dict[str, Any] = {
            "model": self.model_name,
            "model_version": current.model.version,
            "compiled_sizes": list(current.classifier.sizes),
            "compilations": current.classifier.compilations,
        }
        reason = self._not_ready()
        if reason is not None:
            return False, {"ready": False, "reason": reason, **details}
        return True, {"ready": True, **details}

    def _not_ready(self) -> str | None:
        limit = self.stuck_limit_s
        if self.checkpoint.fatal is not None:
            return f"halted: {self.checkpoint.fatal}"
        if (stuck := self.delivery.stuck_seconds()) > limit:
            return f"delivery stuck for {stuck:.0f} s: {self.delivery.last_error or 'no ack'}"
        if (pending := self.checkpoint.pending_seconds()) > limit:
            return f"offset commits failing for {pending:.0f} s"
        if (unsettled := self.checkpoint.unsettled_seconds()) > 2 * limit:
            # Twice the limit: a batch whose delivery is stuck is reported as such first (its
            # delivery starts a slice after its fetch); this catches one that never settles.
            return f"a batch has been in flight for {unsettled:.0f} s"
        return None
