"""A throwaway PostgreSQL server on loopback in a temp folder (`initdb` + `pg_ctl`).

Used by the store tests (one server per test session) and by bench/store.py. Debian's
`postgresql` package provides the binaries (in /usr/lib/postgresql/<version>/bin); when they
are missing and we run as root with apt-get, it is installed. initdb refuses to run as root,
so as root the server runs as the `postgres` user (or `nobody`) in a folder that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class Unavailable(RuntimeError):
    """No PostgreSQL can be started here; the message says why."""


def find_bin_dir(install: bool = True) -> Path:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if dirs:
        return Path(dirs[-1])
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                raise Unavailable(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        return find_bin_dir(install=False)
    raise Unavailable(
        "PostgreSQL's initdb/pg_ctl were not found (install Debian's `postgresql` package: "
        "apt-get install -y postgresql)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    bin_dir: Path
    folder: Path
    port: int
    user: str | None  # the unprivileged user the server runs as (None: ourselves)
    fsync: bool = False

    @property
    def url(self) -> str:
        return f"postgresql://ragtune@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://ragtune@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def start(self) -> None:
        """Start (or start again) the server on its data folder and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.folder} "
            f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200"
        )
        data, log = str(self.folder / "data"), str(self.folder / "log")
        done = self._run("pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start")
        if done.returncode:
            text = Path(log).read_text()[-500:] if Path(log).exists() else ""
            raise Unavailable(f"pg_ctl start failed: {done.stderr.strip()[-300:]} {text}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise Unavailable("PostgreSQL did not accept connections within 30 s")

    def halt(self) -> None:
        """Stop the server at once (as a crash would), keeping its data."""
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(*, fsync: bool = False) -> Server:
    """initdb a fresh cluster (trust auth, loopback only) and start it; `fsync=False` for tests."""
    bin_dir = find_bin_dir()
    user = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            user = name
            break
        if user is None or not shutil.which("runuser"):
            raise Unavailable(
                "running as root without a `postgres`/`nobody` user and runuser: initdb refuses root"
            )
    folder = Path(tempfile.mkdtemp(prefix="ragtune-pg-"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    server = Server(bin_dir, folder, _free_port(), user)
    data = folder / "data"
    done = server._run("initdb", "-D", str(data), "-U", "ragtune", "--auth=trust", "-E", "UTF8", "--no-sync")
    if done.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise Unavailable(f"initdb failed: {done.stderr.strip()[-500:]}")
    server.fsync = fsync
    try:
        server.start()
    except Unavailable:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return server
