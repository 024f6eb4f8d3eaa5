"""Stop requests from outside: SIGTERM (scancel, SLURM preemption, a launcher shutting down) and SIGUSR1
(sbatch --signal=USR1@T before a time limit) ask the training loop to checkpoint after the current step and
exit cleanly; rerunning the same command resumes from that checkpoint.

Ranks may see a signal at different moments, so the decision is taken together: every step ends with one
all-reduce of the flag, and all ranks stop after the same step.
"""

from __future__ import annotations

import signal
import threading

import torch

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequests:
    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def agreed(self, accelerator) -> bool:
        """True on every rank when any rank received a stop signal (one collective per call)."""
        if accelerator.num_processes == 1:
            return self.received is not None
        flag = torch.tensor([1.0 if self.received else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
