"""Adaptive batching (``--batch-size auto``): a batch limit that halves on out-of-memory, and the forward pass
in slices of at most that limit, so that every row comes out once, in order, whatever the device could hold.
Features never depend on the batch size, so a smaller slice changes nothing but the time."""
from __future__ import annotations

import logging
import threading

import numpy as np
import torch

log = logging.getLogger(__name__)

# --batch-size auto starts here and halves on out-of-memory. A GPU gains little past a few hundred
# images (ResNet-50 in bf16 needs about 5 GB at 1024); a CPU's throughput peaks at small batches
# and it has no out-of-memory error to learn from (the OS kills the process instead).
AUTO_BATCH = {"cuda": 1024, "cpu": 32}


class BatchLimit:
    """The largest batch the device has held so far (``--batch-size auto``): halved on out-of-memory."""

    def __init__(self, size: int, adaptive: bool):
        self.size = size
        self.adaptive = adaptive
        self._lock = threading.Lock()

    def shrink(self, failed: int) -> None:
        with self._lock:
            new = max(1, min(self.size, failed // 2))
            if new < self.size:
                log.warning("out of memory at a batch of %d images: continuing with %d", failed, new)
                self.size = new


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's (and other devices') out-of-memory errors, told from any other failure."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def forward_adaptive(forward, pixels, limit: BatchLimit) -> tuple[dict[str, np.ndarray], float]:
    """``forward`` over ``pixels`` in slices of at most ``limit.size``; with an adaptive limit an
    out-of-memory error halves it and the slice runs again, so every row comes out once, in order."""
    pieces: list[dict[str, np.ndarray]] = []
    seconds, i, n = 0.0, 0, len(pixels)
    while i < n:
        size = min(limit.size, n - i)
        try:
            out, sec = forward(pixels[i:i + size])
        except Exception as exc:
            if not (limit.adaptive and is_out_of_memory(exc)) or size == 1:
                raise
            free_device_memory()
            limit.shrink(size)
            continue
        pieces.append(out)
        seconds += sec
        i += size
    if len(pieces) == 1:
        return pieces[0], seconds
    return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}, seconds


def free_device_memory() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
