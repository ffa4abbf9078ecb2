"""A child process of pagedserve (engine core, tensor-parallel rank) must not outlive its parent."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent_pid: int) -> None:
    """Exit (code 1) as soon as this process's parent pid changes: the parent died, however it died (also SIGKILL).
    Polled every 0.5 s from a daemon thread."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
