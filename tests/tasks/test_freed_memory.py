"""Setting up a unival task keeps freed memory in the process for reuse unless --release-freed-memory."""
import subprocess
import sys
from functools import partial

import pytest
from task_files import setup_task

import unival.tasks.base as task_base
from unival.tasks.refcoco import RefcocoConfig, RefcocoTask

make_task = partial(setup_task, RefcocoTask, RefcocoConfig, prefix="refcoco")


@pytest.mark.parametrize("release, expected_calls", [(False, 1), (True, 0)])
def test_task_setup_keeps_freed_memory_unless_told_to_release_it(image_corpus, monkeypatch, release,
                                                                  expected_calls):
    calls = []
    monkeypatch.setattr(task_base, "keep_freed_memory", lambda: calls.append(1) or True)
    make_task(image_corpus, release_freed_memory=release)
    assert len(calls) == expected_calls


# Allocates and frees 120 MiB in blocks five times over, as training steps do, counting the page faults of the
# last time.
REALLOCATION_FAULTS = """
import resource, sys, torch
from unival.memory import freed_memory_kept, keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
assert freed_memory_kept() == kept
for step in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [torch.ones(n * 1024 * 1024) for n in (8, 2, 8, 4, 8)]  # 30720 pages of 4 KiB
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del blocks
print(kept, faults)
"""


def faults_of_reallocation(mode: str):
    completed = subprocess.run([sys.executable, "-c", REALLOCATION_FAULTS, mode], capture_output=True, text=True,
                               check=True)
    kept, faults = completed.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc setting: Linux only")
def test_kept_memory_is_reused_without_page_faults():
    kept, faults = faults_of_reallocation("keep")
    if not kept:
        pytest.skip("the C library is not glibc (no mallopt)")
    assert faults < 1000  # the blocks came back from the heap, already in memory (30720 pages otherwise)
    released_kept, released_faults = faults_of_reallocation("release")
    assert not released_kept
    assert released_faults > faults
