"""Ctrl-C as a request: the loop finishes its step, checkpoints and stops cleanly; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class StopRequest:
    def __init__(self):
        self.requested = False

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C raises KeyboardInterrupt
        print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to stop at once)", flush=True)


@contextmanager
def stop_on_ctrl_c():
    """A StopRequest whose `requested` turns true on Ctrl-C (SIGINT) while the block runs."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # signal handlers live on the main thread only
        yield stop
        return
    previous = signal.signal(signal.SIGINT, stop._handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
