"""Fault injection for tests, in whichever thread or process runs the engine's steps (unset in production):

PAGEDSERVE_INJECT_STEP_FAILURE=<n>  the n-th step raises RuntimeError
PAGEDSERVE_INJECT_STEP_HANG=<n>     the n-th step never returns
"""

from __future__ import annotations

import logging
import threading

from pagedserve import envs

logger = logging.getLogger("pagedserve")

INJECT_FAILURE_ENV = "PAGEDSERVE_INJECT_STEP_FAILURE"
INJECT_HANG_ENV = "PAGEDSERVE_INJECT_STEP_HANG"


class StepFaults:
    """Reads the switches once (a bad value raises ValueError naming the variable)."""

    def __init__(self) -> None:
        self.fail_at = envs.fault_step(INJECT_FAILURE_ENV)
        self.hang_at = envs.fault_step(INJECT_HANG_ENV)
        for name, number in ((INJECT_FAILURE_ENV, self.fail_at), (INJECT_HANG_ENV, self.hang_at)):
            if number is not None:
                logger.warning("Fault injection active: %s=%d", name, number)

    def before_step(self, step_number: int) -> None:
        if step_number == self.fail_at:
            raise RuntimeError(f"Injected failure in engine step {step_number} ({INJECT_FAILURE_ENV})")
        if step_number == self.hang_at:
            logger.warning("Injected hang in engine step %d (%s)", step_number, INJECT_HANG_ENV)
            threading.Event().wait()
