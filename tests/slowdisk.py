"""A slow disk for real processes: an LD_PRELOAD shim that makes fsync, fdatasync and
syncfs wait SLOWDISK_DELAY_MS milliseconds before doing the real thing.

Nothing in batchgen is patched: the process under test runs its own code, and only the
C library's sync calls take longer, as they do on a busy disk, a network volume or a
cloud block device (0.25 s is an ordinary fsync on a loaded EBS volume). batchgen reaches
syncfs through ctypes (`CDLL(None).syncfs`, a dlsym in the default scope), so the shim,
loaded first, answers that lookup too.

    lib = slow_fsync_library(tmp_path_factory)            # compiled once per session
    env = slow_disk_env(lib, delay_ms=250)                # {"LD_PRELOAD": ..., ...}
    subprocess.Popen([...], env={**os.environ, **env})
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DELAY_VARIABLE = "SLOWDISK_DELAY_MS"

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>

/* Read on every call, so one process may change it (tests need not, but it is cheap). */
static void slow_down(void) {
    const char *text = getenv("SLOWDISK_DELAY_MS");
    if (text == NULL) return;
    double ms = strtod(text, NULL);
    if (!(ms > 0)) return;
    long long ns = (long long)(ms * 1e6);
    struct timespec left = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    int saved = errno;
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {
    }
    errno = saved; /* the caller sees the real call's errno, not ours */
}

typedef int (*fd_call)(int);

static fd_call real(const char *name) {
    fd_call found = (fd_call)dlsym(RTLD_NEXT, name);
    if (found == NULL) abort(); /* a shim that silently skipped the sync would lie */
    return found;
}

int fsync(int fd) {
    static fd_call next;
    if (next == NULL) next = real("fsync");
    slow_down();
    return next(fd);
}

int fdatasync(int fd) {
    static fd_call next;
    if (next == NULL) next = real("fdatasync");
    slow_down();
    return next(fd);
}

int syncfs(int fd) {
    static fd_call next;
    if (next == NULL) next = real("syncfs");
    slow_down();
    return next(fd);
}
"""

LIBRARY_NAME = "libslowfsync.so"


def compile_shim(folder: Path) -> Path:
    """Build the shim into `folder`; skip the calling test, loudly, without gcc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip(
            "SLOW-DISK TESTS SKIPPED: gcc is not installed, so the LD_PRELOAD shim that "
            "delays fsync/fdatasync/syncfs cannot be built (apt-get install gcc)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "shim.c"
    source.write_text(SHIM_SOURCE)
    library = folder / LIBRARY_NAME
    built = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"SLOW-DISK TESTS SKIPPED: gcc could not build the shim:\n{built.stderr}")
    return library


def slow_fsync_library(factory: pytest.TempPathFactory) -> Path:
    """The compiled shim, built once per test session under pytest's temp root."""
    library = factory.getbasetemp() / "slowdisk" / LIBRARY_NAME
    if library.exists():
        return library
    return compile_shim(library.parent)


def slow_disk_env(library: Path, *, delay_ms: float) -> dict[str, str]:
    """What to add to a process's environment to give it a disk whose syncs take `delay_ms`."""
    return {"LD_PRELOAD": str(library), DELAY_VARIABLE: f"{delay_ms:g}"}
