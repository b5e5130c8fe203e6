"""Choosing the C memory allocator of the processes unival starts (fairseq-train, the benchmarks).

glibc's malloc fragments a training process's heap: the step allocates and frees activations and gradients of
many sizes in an order that changes little from step to step, and blocks of one step land in the holes of the
previous one. In the ``base`` training step 0.56 GiB of free blocks sat between live ones at the peak (glibc's
``mallinfo2``). tcmalloc and jemalloc keep blocks of a size class together and do not fragment that way; loading
one with ``LD_PRELOAD`` is what PyTorch's own CPU launcher (``python -m torch.backends.xeon.run_cpu``) does.

An allocator can only be chosen when a process starts, so the choice applies to the processes that unival
starts: ``unival train`` and ``unival demo`` (hence the run scripts) and ``bench.run_all``. ``auto`` takes
tcmalloc, else jemalloc, where the system has them (Debian/Ubuntu: ``apt install libtcmalloc-minimal4`` or
``libjemalloc2``), else glibc's. ``UNIVAL_MALLOC`` gives the default of ``--malloc``; a path to a shared library
is taken as is. Preloading is Linux's: elsewhere ``auto`` means the C library's malloc.
"""
import ctypes.util
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

CHOICES = ("auto", "tcmalloc", "jemalloc", "glibc")
# allocator -> (library names for ctypes.util.find_library, the package that ships it on Debian and Ubuntu)
LIBRARIES = {
    "tcmalloc": (("tcmalloc_minimal", "tcmalloc"), "libtcmalloc-minimal4"),
    "jemalloc": (("jemalloc",), "libjemalloc2"),
}
AUTO_ORDER = ("tcmalloc", "jemalloc")
ENV_CHOICE = "UNIVAL_MALLOC"


def add_malloc_argument(parser) -> None:
    """``--malloc`` of the commands that start training processes."""
    parser.add_argument("--malloc", default=default_choice(),
                        help="memory allocator of the training process: auto (tcmalloc, else jemalloc, where the "
                             "system has them, else glibc's), tcmalloc, jemalloc, glibc, or a library's path "
                             "(default: $UNIVAL_MALLOC, else auto)")


def environment_or_exit(choice: str, command: str) -> Tuple[Dict[str, str], str]:
    """``child_environment`` for a command line, or an exit naming the problem."""
    try:
        return child_environment(choice)
    except ValueError as error:
        raise SystemExit(f"unival {command}: {error}")


def default_choice() -> str:
    """``UNIVAL_MALLOC`` if set, else ``auto``."""
    return os.environ.get(ENV_CHOICE, "").strip() or "auto"


def find_library(allocator: str) -> Optional[str]:
    """The shared library of ``allocator`` that the dynamic linker would load (its name or path), or None."""
    names, _ = LIBRARIES[allocator]
    for name in names:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def resolve(choice: str) -> Tuple[str, Optional[str]]:
    """``(allocator, library)`` for a choice: ``("glibc", None)``, ``("tcmalloc", "libtcmalloc_minimal.so.4")``...

    Raises ValueError for an unknown choice, a named allocator the system lacks or a path that does not exist.
    """
    if choice == "glibc" or (choice == "auto" and not sys.platform.startswith("linux")):
        return "glibc", None
    if choice in CHOICES and not sys.platform.startswith("linux"):
        raise ValueError(f"--malloc {choice}: preloading an allocator (LD_PRELOAD) works on Linux only")
    if "/" in choice:
        path = Path(choice)
        if not path.is_file():
            raise ValueError(f"--malloc {choice}: no such file (expected a shared library such as "
                             f"/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)")
        return allocator_of(path.name), str(path)
    if choice == "auto":
        for allocator in AUTO_ORDER:
            library = find_library(allocator)
            if library:
                return allocator, library
        return "glibc", None
    if choice not in LIBRARIES:
        raise ValueError(f"--malloc {choice}: expected one of {', '.join(CHOICES)} or a path to a shared library")
    library = find_library(choice)
    if library is None:
        raise ValueError(f"--malloc {choice}: the system has no {choice} library (Debian/Ubuntu: apt install "
                         f"{LIBRARIES[choice][1]}); --malloc auto falls back to glibc's malloc")
    return choice, library


def allocator_of(library_name: str) -> str:
    for allocator in LIBRARIES:
        if allocator in library_name:
            return allocator
    return "other"


def child_environment(choice: str, environ: Optional[Dict[str, str]] = None) -> Tuple[Dict[str, str], str]:
    """The environment for a child process that uses the chosen allocator, and a line describing the choice.

    The library goes first in ``LD_PRELOAD`` (entries already there stay after it); ``glibc`` removes tcmalloc
    and jemalloc entries that the parent's environment carries.
    """
    env = dict(os.environ if environ is None else environ)
    allocator, library = resolve(choice)
    kept = [entry for entry in env.get("LD_PRELOAD", "").replace(":", " ").split()
            if allocator_of(os.path.basename(entry)) not in LIBRARIES]
    preload: List[str] = ([library] if library else []) + kept
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    if library:
        description = f"memory allocator: {allocator} ({library}); --malloc glibc for the C library's"
    elif choice == "auto":
        description = ("memory allocator: glibc's malloc (no tcmalloc or jemalloc found; on Debian/Ubuntu "
                       "`apt install libtcmalloc-minimal4` lowers the peak memory of CPU training)")
    else:
        description = "memory allocator: glibc's malloc"
    return env, description


def active_allocator() -> str:
    """Which allocator serves this process's ``malloc``: ``tcmalloc``, ``jemalloc``, ``glibc``, or ``other``.

    Reads which mapped file holds the address that ``malloc`` resolves to (Linux); elsewhere ``glibc`` is
    assumed."""
    try:
        address = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                start, end = (int(value, 16) for value in fields[0].split("-"))
                if start <= address < end:
                    name = os.path.basename(fields[-1]) if len(fields) >= 6 else ""
                    return "glibc" if name.startswith("libc.so") or name.startswith("libc-") else allocator_of(name)
    except (OSError, AttributeError, ValueError):
        pass
    return "glibc"


def release_free_memory() -> bool:
    """Gives the free memory the allocator holds back to the system (tcmalloc's ``MallocExtension_ReleaseFreeMemory``,
    glibc's ``malloc_trim``), so that memory freed before a measurement does not count in its peak; False where
    the allocator has no such call (jemalloc, other systems)."""
    process = ctypes.CDLL(None)
    release = {"tcmalloc": "MallocExtension_ReleaseFreeMemory", "glibc": "malloc_trim"}.get(active_allocator())
    function = getattr(process, release, None) if release else None
    if function is None:
        return False
    if release == "malloc_trim":
        function(ctypes.c_size_t(0))
    else:
        function()
    return True
