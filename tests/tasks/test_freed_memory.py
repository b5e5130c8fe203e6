"""Setting up a unival task keeps freed memory in the process for reuse unless --release-freed-memory."""
import subprocess
import sys
from functools import partial

import pytest
from task_files import setup_task

import unival.tasks.base as task_base
from unival.allocator import child_environment
from unival.tasks.refcoco import RefcocoConfig, RefcocoTask

make_task = partial(setup_task, RefcocoTask, RefcocoConfig, prefix="refcoco")


@pytest.mark.parametrize("release, expected_calls", [(False, 1), (True, 0)])
def test_task_setup_keeps_freed_memory_unless_told_to_release_it(image_corpus, monkeypatch, release,
                                                                  expected_calls):
    calls = []
    monkeypatch.setattr(task_base, "keep_freed_memory", lambda: calls.append(1) or True)
    make_task(image_corpus, release_freed_memory=release)
    assert len(calls) == expected_calls


# Frees a 64 MiB block and reports how much of it stays resident; then allocates and frees 120 MiB in blocks five
# times over, as training steps do, and counts the page faults of the fewest-faulting of the last four times (with
# memory kept, a time now and then faults 8192-16384 pages in, for reasons outside the process, where most fault
# none; given back, every time faults 24000-29000).
REALLOCATION = """
import os, resource, sys, torch
from unival.memory import freed_memory_kept, keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
assert freed_memory_kept() == kept

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

before = resident()
block = torch.ones(16 * 1024 * 1024)
del block
retained = resident() - before
counts = []
for step in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(n * 1024 * 1024) for n in (8, 2, 8, 4, 8)]  # 30720 pages of 4 KiB
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del blocks
print(kept, retained, min(counts[1:]))
"""


def reallocation(mode: str):
    env, _ = child_environment("glibc")  # glibc's malloc even where the tests run under tcmalloc
    completed = subprocess.run([sys.executable, "-c", REALLOCATION, mode], capture_output=True, text=True,
                               check=True, env=env)
    kept, retained, faults = completed.stdout.split()
    return kept == "True", int(retained), int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc setting: Linux only")
def test_kept_memory_stays_resident_and_is_reused_with_fewer_page_faults():
    kept, retained, faults = reallocation("keep")
    if not kept:
        pytest.skip("the C library is not glibc (no mallopt)")
    released_kept, released_retained, released_faults = reallocation("release")
    assert not released_kept
    mib = 1024 * 1024
    assert retained >= 60 * mib and released_retained < 32 * mib  # the freed 64 MiB: kept, or given back
    # blocks come back from the heap, mostly already in memory; given back, each is faulted in again
    assert faults < released_faults and faults < 30720 // 2
