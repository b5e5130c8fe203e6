"""Choosing the memory allocator of the processes unival starts: resolving --malloc, the child's LD_PRELOAD,
which allocator really serves malloc in a process started that way, and what glibc's settings then do."""
import json
import subprocess
import sys

import pytest

from unival import allocator
from unival.cli import main as cli_main

# Prints which allocator serves malloc and whether glibc's keep-freed-memory settings were applied.
PROBE = """
import json, logging
logging.basicConfig(level=logging.INFO)
from unival.allocator import active_allocator
from unival.memory import keep_freed_memory
print(json.dumps({"active": active_allocator(), "kept": keep_freed_memory()}))
"""


def probe(env, logged=None):
    completed = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    if logged is not None:
        logged.append(completed.stderr)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def system_library(name):
    library = allocator.find_library(name)
    if library is None:
        pytest.skip(f"the system has no {name} (Debian/Ubuntu: apt install {allocator.LIBRARIES[name][1]})")
    return library


@pytest.fixture
def libraries(monkeypatch):
    """Pretends the system holds the named allocators: ``libraries({"jemalloc"})``."""
    fake = {"tcmalloc": "libtcmalloc_minimal.so.fake", "jemalloc": "libjemalloc.so.fake"}

    def install(present):
        monkeypatch.setattr(allocator, "find_library", lambda name: fake[name] if name in present else None)
    return install


def test_auto_prefers_tcmalloc_then_jemalloc_then_glibc(libraries):
    libraries({"tcmalloc", "jemalloc"})
    assert allocator.resolve("auto") == ("tcmalloc", "libtcmalloc_minimal.so.fake")
    libraries({"jemalloc"})
    assert allocator.resolve("auto") == ("jemalloc", "libjemalloc.so.fake")
    libraries(set())
    assert allocator.resolve("auto") == ("glibc", None)
    env, description = allocator.child_environment("auto", {"PATH": "/bin"})
    assert "LD_PRELOAD" not in env and "apt install libtcmalloc-minimal4" in description


def test_a_named_allocator_the_system_lacks_is_refused_naming_its_package(libraries):
    libraries({"tcmalloc"})
    with pytest.raises(ValueError, match="no jemalloc library.*apt install libjemalloc2"):
        allocator.resolve("jemalloc")


def test_unknown_choices_and_missing_paths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="expected one of auto, tcmalloc, jemalloc, glibc"):
        allocator.resolve("mimalloc")
    with pytest.raises(ValueError, match="no such file"):
        allocator.resolve(str(tmp_path / "libtcmalloc.so.4"))
    library = tmp_path / "libjemalloc.so.2"
    library.write_bytes(b"")
    assert allocator.resolve(str(library)) == ("jemalloc", str(library))


def test_child_preload_goes_first_and_replaces_other_allocators(libraries):
    libraries({"tcmalloc", "jemalloc"})
    parent = {"LD_PRELOAD": "/opt/libjemalloc.so.2:/opt/libother.so", "HOME": "/root"}
    env, description = allocator.child_environment("tcmalloc", parent)
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.fake /opt/libother.so" and env["HOME"] == "/root"
    assert description.startswith("memory allocator: tcmalloc (libtcmalloc_minimal.so.fake)")
    env, description = allocator.child_environment("glibc", parent)
    assert env["LD_PRELOAD"] == "/opt/libother.so" and description == "memory allocator: glibc's malloc"
    env, _ = allocator.child_environment("glibc", {"LD_PRELOAD": "libtcmalloc_minimal.so.4"})
    assert "LD_PRELOAD" not in env
    assert parent["LD_PRELOAD"] == "/opt/libjemalloc.so.2:/opt/libother.so"  # the parent's is left alone


def test_malloc_default_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(allocator.ENV_CHOICE, "glibc")
    assert allocator.default_choice() == "glibc"
    monkeypatch.delenv(allocator.ENV_CHOICE)
    assert allocator.default_choice() == "auto"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc: Linux only")
def test_glibc_child_keeps_freed_memory_with_glibc_settings():
    env, _ = allocator.child_environment("glibc")
    assert probe(env) == {"active": "glibc", "kept": True}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc: Linux only")
def test_glibc_process_is_told_of_an_installed_allocator():
    installed, library = allocator.resolve("auto")
    if library is None:
        pytest.skip("the system has neither tcmalloc nor jemalloc (apt install libtcmalloc-minimal4)")
    env, _ = allocator.child_environment("glibc")
    logged = []
    assert probe(env, logged)["kept"]
    assert f"{installed} is installed: started with LD_PRELOAD={library}" in logged[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc: Linux only")
@pytest.mark.parametrize("name", ["tcmalloc", "jemalloc"])
def test_preloaded_allocator_serves_malloc_and_glibc_settings_are_skipped(name):
    system_library(name)
    env, _ = allocator.child_environment(name)
    assert probe(env) == {"active": name, "kept": False}


def test_train_refuses_an_unknown_allocator_before_running(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unival train: --malloc mimalloc: expected one of"):
        cli_main(["train", "caption/demo", "--data", str(tmp_path), "--save-dir", "out", "--dry-run",
                  "--malloc", "mimalloc"])
    assert capsys.readouterr().out == ""  # nothing was started


def test_train_dry_run_names_the_allocator(tmp_path, capsys):
    assert cli_main(["train", "caption/demo", "--data", str(tmp_path), "--save-dir", "out", "--dry-run",
                     "--malloc", "glibc"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "[unival] memory allocator: glibc's malloc"


def test_auto_means_the_c_library_off_linux(libraries, monkeypatch):
    libraries({"tcmalloc"})
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.resolve("auto") == ("glibc", None)
    with pytest.raises(ValueError, match="Linux only"):
        allocator.resolve("tcmalloc")


def test_demo_refuses_an_unknown_allocator_before_writing_anything(tmp_path):
    with pytest.raises(SystemExit, match="unival demo: --malloc mimalloc: expected one of"):
        cli_main(["demo", "--out", str(tmp_path / "demo"), "--malloc", "mimalloc"])
    assert not (tmp_path / "demo").exists()


# Frees 256 MiB of 1 MiB blocks, then gives the allocator's free memory back; prints the resident sizes.
RELEASE_PROBE = """
import json
from unival.allocator import active_allocator, release_free_memory
from unival.memory import keep_freed_memory

def resident():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

keep_freed_memory()
blocks = [bytearray(1 << 20) for _ in range(256)]
del blocks
held = resident()
released = release_free_memory()
print(json.dumps({"active": active_allocator(), "released": released, "held": held, "after": resident()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc: Linux only")
@pytest.mark.parametrize("name", ["glibc", "tcmalloc"])
def test_release_free_memory_gives_freed_blocks_back(name):
    if name != "glibc":
        system_library(name)
    env, _ = allocator.child_environment(name)
    completed = subprocess.run([sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, env=env,
                               check=True)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["active"] == name and result["released"] is True
    assert result["held"] - result["after"] > 200 * (1 << 20)
