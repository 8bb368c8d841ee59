import platform
import re
import resource
from pathlib import Path

import pytest
import torch

from bevt import host_memory
from bevt.models import create_model

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
THP = host_memory.THP_SETTINGS / "enabled"
HUGE_PAGES = GLIBC and THP.is_file() and "[never]" not in THP.read_text()


@pytest.mark.skipif(not GLIBC, reason="sets glibc's malloc")
def test_a_freed_buffer_is_reused_without_page_faults(monkeypatch):
    """A step's buffer freed and allocated again (here 64 MiB, like a large activation) comes
    back without faulting its pages in. glibc's defaults serve sizes above 32 MiB with fresh
    `mmap` pages and unmap them on free, so every reuse faults in all 16,384 pages again. The
    heap may take a round or two to settle (an aligned allocation can miss the chunk just freed
    by a few bytes), and on a shared machine the kernel now and then migrates pages, which the
    next access faults back in: the best of four rounds after the first is compared."""
    for name in host_memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert host_memory.keep_freed_host_memory()
    pages = (64 << 20) // resource.getpagesize()
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # allocated, touched, freed
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert min(faults[1:]) < pages // 16, faults


def test_the_users_own_allocator_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not host_memory.keep_freed_host_memory()


def _heap_parts():
    """(start, end, VmFlags) of each part of this process's heap, from /proc/self/smaps."""
    parts, current = [], None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            current = [int(a, 16) for a in line.split()[0].split("-")] if line.endswith("[heap]") else None
        elif current is not None and line.startswith("VmFlags:"):
            parts.append((*current, line.split()[1:]))
    return parts


@pytest.mark.skipif(not HUGE_PAGES, reason="needs glibc and transparent huge pages")
def test_the_heap_a_step_grew_is_advised_for_huge_pages(monkeypatch):
    """Every page of the heap as the steps left it is marked for huge pages ("hg" in smaps),
    which is what lets the kernel back it with them."""
    for name in host_memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert host_memory.keep_freed_host_memory()
    torch.manual_seed(0)
    encoder = create_model("debug")
    for _ in range(2):
        encoder(torch.randn(4, 3, 8, 64, 64)).square().sum().backward()
    advised = host_memory.back_heap_with_huge_pages()
    assert advised >= 16 << 20  # the steps' buffers: tens of MB
    page = int((host_memory.THP_SETTINGS / "hpage_pmd_size").read_text())
    heap = _heap_parts()  # reading smaps may grow the heap past the advised range: not compared
    start = -(-heap[0][0] // page) * page
    inside = [(last - first, flags) for first, last, flags in heap if first >= start and last <= start + advised]
    assert sum(size for size, _ in inside) == advised
    assert all("hg" in flags for _, flags in inside)


def test_huge_pages_only_where_freed_memory_stays_in_the_heap(monkeypatch):
    monkeypatch.setattr(host_memory, "_freed_memory_kept", False)
    assert host_memory.back_heap_with_huge_pages() == 0
