"""Search workers on one machine split its cores: each scores accuracy on cores / (live workers) torch threads.

Two workers that each take every core run at half the speed of one (bench/search_workers.py): their thread pools
fight over the cores. Each worker holds an flock on a file of its own in $ELASTIC_NAS_WORKERS_DIR (default
/tmp/elastic-nas-workers, apart from the device lock's folder) while it runs, so the held files are the live
workers; the OS drops a killed worker's lock, and the next count removes its file. A user's explicit
OMP_NUM_THREADS wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path

from supernet.device_lock import machine_cores, machine_dir, open_lock_file

WORKERS_DIR_ENV = "ELASTIC_NAS_WORKERS_DIR"  # apart from the lock folder: a worker without the lock still splits cores


class MachineWorkers:
    """This worker's registration among the workers of the machine (a context manager)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = Path(directory) if directory is not None else machine_dir(WORKERS_DIR_ENV, "elastic-nas-workers")
        self.fd = -1
        self.path: Path | None = None

    def __enter__(self) -> MachineWorkers:
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.dir / f".{name}"
        self.fd = open_lock_file(tmp)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.path = self.dir / name
        os.replace(tmp, self.path)  # appears already locked: a count never mistakes it for a dead worker's
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.path = -1, None

    def count(self) -> int:
        """Live workers on this machine (this one included); files of dead ones are removed."""
        alive = 0
        for path in self.dir.glob("[!.]*"):
            try:
                fd = os.open(path, os.O_RDONLY)  # flock needs no write access: another user's file will do
            except OSError:
                continue  # its worker just finished
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                alive += 1  # its worker holds it
            else:
                with contextlib.suppress(OSError):
                    path.unlink()  # nobody holds it: its worker died
            finally:
                os.close(fd)
        return max(alive, 1)

    def threads(self) -> int | None:
        """Torch threads for this worker now: cores / live workers, or None where OMP_NUM_THREADS decides."""
        if os.environ.get("OMP_NUM_THREADS"):
            return None
        return max(1, machine_cores() // self.count())
