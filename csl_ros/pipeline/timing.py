"""Cheap per-stage timers: CUDA events on GPU (no sync per stage), perf_counter on CPU."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class StageTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._marks: list[tuple[str, object, object]] = []

    @contextmanager
    def stage(self, name: str):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._marks.append((name, start, end))

    def result(self) -> dict[str, float]:
        """Milliseconds per stage (synchronises once on GPU)."""
        if self.cuda and self._marks:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for name, s, e in self._marks:
            ms = s.elapsed_time(e) if self.cuda else (e - s) * 1000.0
            out[name] = out.get(name, 0.0) + ms
        return out
