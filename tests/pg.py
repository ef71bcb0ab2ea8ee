"""A throwaway PostgreSQL cluster for the tests: started once per session, a fresh database per test.

The server is real (Debian's ``postgresql`` package, or any install whose ``pg_config --bindir``
holds ``initdb`` and ``pg_ctl``), listens on 127.0.0.1 on a free port, and is deleted at the end.
``EXTRACTKIT_TEST_POSTGRES_URL=postgresql://user@host:port/db`` uses a server you already run
instead (each test still gets its own database, created from it). Without either, the PostgreSQL
tests skip -- unless ``EXTRACTKIT_REQUIRE_POSTGRES`` is set (CI), where a missing server fails them.
``initdb`` refuses to run as root: as root the cluster belongs to the ``postgres`` user.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

REQUIRE_ENV = "EXTRACTKIT_REQUIRE_POSTGRES"
URL_ENV = "EXTRACTKIT_TEST_POSTGRES_URL"


def _bindir() -> Path | None:
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    candidates = [Path(out.strip())] if out.strip() else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A running server: ``url(db)`` for a database on it, ``new_database()`` for a fresh one."""

    def __init__(self, base_url: str, owned_dir: Path | None = None, bindir: Path | None = None,
                 as_user: list[str] | None = None, opts: str = "") -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.owned_dir = owned_dir
        self.bindir = bindir
        self.as_user = as_user or []
        self.opts = opts  # the server's options, for ``ctl("start")`` after a stop
        self._n = itertools.count()

    def url(self, db: str) -> str:
        head = self.base_url.rsplit("/", 1)[0] if self.base_url.count("/") > 2 else self.base_url
        return f"{head}/{db}"

    def new_database(self) -> str:
        import psycopg

        name = f"extractkit_t{os.getpid()}_{next(self._n)}"
        with psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def ctl(self, *args: str) -> None:
        """``pg_ctl ARGS`` on a cluster this process started (``ctl("restart", "-m", "fast")``,
        ``ctl("stop", "-m", "fast")``, ``ctl("start")``), waiting for it to finish."""
        if self.owned_dir is None or self.bindir is None:
            raise RuntimeError("pg_ctl needs a cluster started by the tests, not " + URL_ENV)
        extra = ["-o", self.opts] if args[:1] == ("start",) else []
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.owned_dir / "data"), "-l",
                        str(self.owned_dir / "log"), "-w", "-t", "60", *args, *extra], capture_output=True,
                       check=True, text=True, timeout=120)  # fmt: skip

    def stop(self) -> None:
        if self.owned_dir is None or self.bindir is None:
            return
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.owned_dir / "data"),
                        "-m", "immediate", "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(self.owned_dir, ignore_errors=True)


def start() -> Cluster | str:
    """A running cluster, or the reason there is none."""
    if os.environ.get(URL_ENV):
        return Cluster(os.environ[URL_ENV])
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[dev,postgres]')"
    bindir = _bindir()
    if bindir is None:
        return "no PostgreSQL server binaries (apt-get install postgresql, or set " + URL_ENV + ")"
    root = Path(tempfile.mkdtemp(prefix="extractkit-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    os.chmod(root, 0o755)
    data, port = root / "data", _free_port()
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--no-sync"], capture_output=True, check=True, text=True)  # fmt: skip
        opts = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
                " -c synchronous_commit=off -c max_connections=400 -c shared_buffers=128MB")
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                        str(root / "log"), "-w", "-t", "60", "start"], capture_output=True, check=True,
                       text=True)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        return f"could not start PostgreSQL: {exc.stderr or exc.stdout} {log[-2000:]}"
    return Cluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", root, bindir, as_user, opts)
