"""A throwaway PostgreSQL server for tests and benchmarks: Debian's `postgresql` binaries, a data and socket
directory of its own, loopback only, a free port, trust authentication, removed when stopped.

    with PostgresServer() as pg:
        url = pg.create_database("study")      # postgresql+psycopg2://postgres@127.0.0.1:<port>/study

Run as root (as on CI), the server runs as the `postgres` user that Debian's package creates: PostgreSQL refuses
to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REQUIRE_ENV = "NAS_REQUIRE_POSTGRES"  # set by .ci/run: there, a missing server fails the tests instead of skipping
HOW_TO_GET = "install Debian's postgresql package (apt-get install postgresql) to run the PostgreSQL tests"


def server_bin() -> Path | None:
    """The folder of initdb and pg_ctl (Debian keeps them out of PATH), or None when PostgreSQL is not installed."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL server in a temporary directory (see the module docstring)."""

    def __init__(self) -> None:
        bindir = server_bin()
        if bindir is None:
            raise FileNotFoundError(HOW_TO_GET)
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sockets"
        self.sockets.mkdir()
        self.port = _free_port()
        self.user = "postgres" if os.geteuid() == 0 else None  # root: run the server as Debian's postgres user
        if self.user:
            pw = pwd.getpwnam(self.user)
            for p in (self.root, self.sockets):
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:1])} failed: {(res.stderr or res.stdout).strip()[-2000:]}")
        return res

    def start(self) -> PostgresServer:
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
            options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -F -c max_connections=200"
            log = str(self.root / "server.log")
            self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        except BaseException:
            self.stop()  # no server or folder left behind
            raise
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
