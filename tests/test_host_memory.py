import platform
import resource

import pytest
import torch

from bevt import host_memory
from bevt.models import create_model

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="sets glibc's malloc")
def test_training_steps_reuse_freed_memory_without_page_faults(monkeypatch):
    """After the setting, steps of the demo encoder fault (almost) no pages in; glibc's defaults
    give about 80 a step here (freed buffers unmapped or trimmed, the next step faults them in)."""
    for name in host_memory.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert host_memory.keep_freed_host_memory()
    torch.manual_seed(0)
    encoder = create_model("debug")
    video = torch.randn(4, 3, 8, 64, 64)
    for _ in range(3):
        encoder(video).square().sum().backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        encoder(video).square().sum().backward()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before <= 15


def test_the_users_own_allocator_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert not host_memory.keep_freed_host_memory()
