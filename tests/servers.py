"""Real servers for the tests: PostgreSQL (Debian's, or whatever `initdb` is on the PATH) and an MLflow tracking
server, each on 127.0.0.1 on a free port with its data in a temporary folder, stopped afterwards."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_tool(name: str) -> str | None:
    """A PostgreSQL server program: on the PATH, or where Debian's package puts it."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class Postgres:
    """A throwaway PostgreSQL cluster. initdb refuses to run as root, so as root (CI) the server runs as the
    `postgres` user in a folder that user owns. Trust authentication, 127.0.0.1 only."""

    def __init__(self) -> None:
        initdb, self.pg_ctl = pg_tool("initdb"), pg_tool("pg_ctl")
        assert initdb and self.pg_ctl, ("PostgreSQL is not installed; .ci/run installs it (apt-get install "
                                        "postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="nas-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])
        self.start()
        self.url = self.database("nas")

    def database(self, name: str) -> str:
        """A new, empty database on this server: its URL."""
        createdb = pg_tool("createdb")
        assert createdb
        self._run([createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name])
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _run(self, argv: list[str]) -> None:
        r = subprocess.run([*self.as_user, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{' '.join(argv)}: {r.stdout}{r.stderr}"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -h 127.0.0.1 -c fsync=off"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"])

    def close(self) -> None:
        try:
            self.stop("immediate")
        except AssertionError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class MlflowServer:
    """`mlflow server` with a SQLite store and proxied artifacts (clients upload through the server), one
    worker process."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nas-mlflow-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        mlflow = Path(sys.executable).parent / "mlflow"
        self.log = (self.dir / "server.log").open("w")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.dir / 'mlflow.db'}",
             "--artifacts-destination", str(self.dir / "artifacts")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, (self.dir / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start within 120 s"
            time.sleep(0.5)

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, 9)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
