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

Once a step has grown the heap to its working size, `back_heap_with_huge_pages` asks the kernel
to back it with transparent huge pages (2 MiB instead of 4 KiB): a step sweeps hundreds of MB of
activations and gradients, and with 4 KiB pages every sweep also walks the page tables. Where the
system leaves huge pages to the program (`/sys/kernel/mm/transparent_hugepage/enabled` is
`madvise`, the common default) the demo-size joint step runs about 2% faster with them.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# madvise advice (Linux's mman.h): mark a range for huge pages; collapse it into them now (Linux 6.1+)
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
THP_SETTINGS = Path("/sys/kernel/mm/transparent_hugepage")
# Allocations up to this size come from the heap, and the heap is never trimmed by less.
KEEP_UP_TO_BYTES = 1 << 30
# A user's own allocator settings win (e.g. MALLOC_MMAP_THRESHOLD_=..., or jemalloc preloaded).
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")
# Whether keep_freed_host_memory set the thresholds in this process.
_freed_memory_kept = False


@functools.cache
def _glibc() -> ctypes.CDLL:
    """glibc, with errno kept for `ctypes.get_errno`; OSError where there is no libc.so.6 (musl)."""
    return ctypes.CDLL("libc.so.6", use_errno=True)


def keep_freed_host_memory() -> bool:
    """Set glibc's malloc to reuse freed memory instead of returning it to the OS; True if set.

    Does nothing (False) off Linux/glibc or where the user configured the allocator."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = _glibc().mallopt
    except (OSError, AttributeError):  # not glibc (musl has no libc.so.6)
        return False
    done = mallopt(M_MMAP_THRESHOLD, KEEP_UP_TO_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO_BYTES) == 1
    if not done:
        log.debug("mallopt refused the thresholds; malloc keeps its defaults")
    global _freed_memory_kept
    _freed_memory_kept = _freed_memory_kept or done
    return done


def back_heap_with_huge_pages() -> int:
    """Back the heap as it is now with transparent huge pages -> bytes advised (0: nothing done).

    Call it once the heap holds a step's buffers (after the first training step): the pages it
    has are collapsed into huge pages now (about 2.5 ms per MiB, once; kernels before 6.1 leave
    that to the background `khugepaged`), and the buffers later steps reuse stay in them. Does
    nothing unless `keep_freed_host_memory` is in effect (otherwise freed buffers leave the heap
    and come back as fresh small pages) or where the system disables huge pages (`never`)."""
    if not _freed_memory_kept:
        return 0
    try:
        if "[never]" in (THP_SETTINGS / "enabled").read_text():
            return 0
        page = int((THP_SETTINGS / "hpage_pmd_size").read_text())
        # one line per part of the heap that differs in its flags, e.g. advised earlier or not
        heap = [int(address, 16) for line in Path("/proc/self/maps").read_text().splitlines()
                if line.endswith("[heap]") for address in line.split()[0].split("-")]
    except (OSError, ValueError):  # no THP support or no procfs
        return 0
    if not heap:
        return 0
    start, end = -(-min(heap) // page) * page, max(heap) // page * page  # whole huge pages inside the heap
    if end <= start:
        return 0
    libc = _glibc()
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.madvise(start, end - start, MADV_HUGEPAGE) != 0:
        log.debug("madvise(MADV_HUGEPAGE) failed: errno %d", ctypes.get_errno())
        return 0
    if libc.madvise(start, end - start, MADV_COLLAPSE) != 0:  # e.g. EINVAL before Linux 6.1
        log.debug("madvise(MADV_COLLAPSE) failed: errno %d; khugepaged collapses later", ctypes.get_errno())
    return end - start
