"""Peak resident memory of a training or evaluation phase (and peak CUDA memory on a GPU)."""

from __future__ import annotations

import os
import threading

import torch

__all__ = ["PeakMemory"]


class PeakMemory:
    """Peak resident memory (RSS, MiB) of this process while active, sampled every ``interval`` seconds.

    On CUDA the peak allocated memory is reported as ``cuda_peak_mib`` as well.
    """

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    @staticmethod
    def rss_bytes() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start_rss = self.rss_bytes()
        self.peak = self.start_rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_bytes())
        self.peak_mib = self.peak / 2**20
        self.start_mib = self.start_rss / 2**20
        self.cuda_peak_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
