"""Host memory for training on the CPU: keep freed buffers for the next step.

A training step frees and re-allocates the same activation- and gradient-sized buffers (hundreds
of KB to tens of MB) every step. glibc's malloc serves such sizes with fresh `mmap` pages, or
trims them off the top of its heap when they are freed, so every step faults its pages in again:
about 6,000 page faults and 12 ms of system CPU time per step of the demo-size joint model,
against about 70 and 1 ms with this setting (`python benchmarks/train_throughput.py
--precisions fp32` prints them; prefixed with `GLIBC_TUNABLES=`, an allocator setting of the
user's own, it runs with glibc's defaults). With `mmap` and trimming switched off for these
sizes the heap keeps what a step freed and the next step reuses it; the process keeps its peak
footprint between steps instead of handing it back.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations up to this size come from the heap, and the heap is never trimmed by less.
KEEP_UP_TO_BYTES = 1 << 30
# A user's own allocator settings win (e.g. MALLOC_MMAP_THRESHOLD_=..., or jemalloc preloaded).
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def keep_freed_host_memory() -> bool:
    """Set glibc's malloc to reuse freed memory instead of returning it to the OS; True if set.

    Does nothing (False) off Linux/glibc or where the user configured the allocator."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6)
        return False
    done = mallopt(M_MMAP_THRESHOLD, KEEP_UP_TO_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO_BYTES) == 1
    if not done:
        log.debug("mallopt refused the thresholds; malloc keeps its defaults")
    return done
