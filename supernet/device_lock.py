"""A machine-wide lock per device, so that latency is only ever timed while nothing else is measured on it.

Several measuring processes on one machine (search workers, a nas-measure next to a nas-search) would otherwise
time latency while another evaluates accuracy on the same cores, and their latency labels would depend on how the
work happened to interleave. Every timing (a latency estimate, a kernel's speed, the paired reference's
calibration) holds the device's lock *exclusively*; every other measurement on the device (the task metric) holds
it *shared*, so several processes score accuracy at once but never while one of them times.

A gate in front of the lock gives timing priority: a process that wants to time takes the gate first, and no new
shared holder passes the gate until it has timed, so timings do not starve behind a stream of overlapping
evaluations. Both are `flock`s on files in `lock_dir()` (a fixed folder of the machine, open to all its users): the OS
releases them when a holder dies, even by kill -9.
Within one process the lock is re-entrant (a timing inside a timing does not wait for itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

LOCK_DIR_ENV = "ELASTIC_NAS_LOCK_DIR"
SHARED, EXCLUSIVE = "shared", "exclusive"
_local = threading.local()  # device -> mode held by this thread (other threads wait on the flock like processes)


def _held() -> dict[str, str]:
    if not hasattr(_local, "held"):
        _local.held = {}
    return _local.held


def machine_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_dir(env: str, name: str) -> Path:
    """$`env`, else /tmp/`name`: a fixed place every process of the machine shares (a per-job TMPDIR, as under
    SLURM, would hide workers from each other), created writable for every user of the machine."""
    d = Path(os.environ.get(env) or Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()) / name)
    if not d.is_dir():
        try:
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o777)  # other users' processes lock here too (not sticky: they may remove stale files)
        except OSError as e:
            raise ValueError(f"cannot create the folder {d} for machine-wide locks ({e.strerror}); set {env} to "
                             "a writable folder on this machine") from None  # fmt: skip
    return d


def lock_dir() -> Path:
    """Where the lock files live: $ELASTIC_NAS_LOCK_DIR, else /tmp/elastic-nas-locks (local to the machine, which is
    what makes the lock per machine)."""
    return machine_dir(LOCK_DIR_ENV, "elastic-nas-locks")


def open_lock_file(path: Path) -> int:
    """A descriptor to flock `path` with, creating it readable and writable for every user; flock needs no write
    access, so another user's file opens read-only."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)  # despite the umask
        return fd
    except OSError as e:
        raise ValueError(f"cannot open the lock file {path} ({e.strerror}); set {LOCK_DIR_ENV} to a writable "
                         "folder on this machine") from None  # fmt: skip


def _files(device: str) -> tuple[Path, Path]:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", device)
    d = lock_dir()
    return d / f"{name}.gate", d / f"{name}.lock"


@contextlib.contextmanager
def hold(device: str, mode: str) -> Iterator[None]:
    """Hold `device`'s lock in `mode` (SHARED or EXCLUSIVE) for the duration of the block."""
    held = _held().get(device)
    if held in (EXCLUSIVE, mode):
        yield  # re-entrant: this thread holds it already
        return
    if held == SHARED:
        raise RuntimeError(f"a timing on {device} inside a shared measurement would wait for itself")
    gate_path, lock_path = _files(device)
    gate = open_lock_file(gate_path)
    lock = -1
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        lock = open_lock_file(lock_path)
        fcntl.flock(lock, fcntl.LOCK_EX if mode == EXCLUSIVE else fcntl.LOCK_SH)
        if mode == SHARED:  # in: let the gate go at once; a timer keeps it until done, so no new shared holder enters
            os.close(gate)
            gate = -1
        _held()[device] = mode
        try:
            yield
        finally:
            _held().pop(device, None)
    finally:
        for fd in (lock, gate):  # closing a descriptor releases its flock
            if fd >= 0:
                os.close(fd)


def timing(device: str = "cpu") -> contextlib.AbstractContextManager[None]:
    """Time something on `device`: nothing else is measured on it meanwhile."""
    return hold(device, EXCLUSIVE)


def measuring(device: str = "cpu") -> contextlib.AbstractContextManager[None]:
    """Measure something other than time on `device` (it may run beside other such measurements)."""
    return hold(device, SHARED)
