"""The private local PostgreSQL cluster: socket-only, idempotent, durable across restarts, stops cleanly."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from app.db.cluster import ClusterError, LocalCluster, find_pg_bindir

ROOT = Path(__file__).resolve().parents[2]
# Not pytest's tmp_path: /tmp/pytest-of-root is 0700, so the `postgres` user (used when running as
# root) could not reach a data directory there. Kept short for the Unix socket path limit.
CLUSTERS = ROOT / ".palisade" / "test-clusters"


def _free_tcp_port() -> int:
    """A port nothing listens on at the moment, so "connection refused" proves the cluster is not there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_uid() -> int:
    """Who the cluster's files and processes belong to."""
    return pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()


def _processes_in(directory: Path) -> list[int]:
    """Live (non-zombie) processes whose working directory is *directory*: the postmaster and its children."""
    real = os.path.realpath(directory)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if os.path.realpath(cwd) == real and state != "Z":
            found.append(int(entry.name))
    return found


def _query(url: str, sql: str) -> object:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture
def cluster_base() -> Iterator[Path]:
    """A fresh, not yet existing directory under the project, removed (with its clusters) afterwards."""
    CLUSTERS.mkdir(parents=True, exist_ok=True)
    base = CLUSTERS / secrets.token_hex(4)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_cluster(cluster_base: Path) -> Iterator[Callable[[str], LocalCluster]]:
    """Factory for clusters in the fresh directory; every one is stopped at teardown, even on failure."""
    clusters: list[LocalCluster] = []

    def make(name: str = "data") -> LocalCluster:
        cluster = LocalCluster(cluster_base / name, port=_free_tcp_port())
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[[str], LocalCluster]) -> LocalCluster:
    return make_cluster("data")


def test_find_pg_bindir_has_server_binaries() -> None:
    bindir = find_pg_bindir()
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(bindir / name, os.X_OK)


def test_explicit_bindir_must_be_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PALISADE_PG_BINDIR", str(tmp_path))
    with pytest.raises(ClusterError, match="PALISADE_PG_BINDIR"):
        find_pg_bindir()


def test_urls_round_trip_through_sqlalchemy() -> None:
    cluster = LocalCluster(Path("/srv/pal isade/data"), port=5544)
    assert cluster.superuser_url == (
        "postgresql+psycopg://postgres@/postgres?host=/srv/pal%20isade/data/run&port=5544"
    )
    url = make_url(cluster.url_for(user="app@x", database="t/db", password="p:w@d/+&?"))
    assert (url.username, url.password, url.database) == ("app@x", "p:w@d/+&?", "t/db")
    assert url.query == {"host": "/srv/pal isade/data/run", "port": "5544"}


def test_socket_path_too_long_is_a_clear_error() -> None:
    with pytest.raises(ClusterError, match="Unix socket path .* must be shorter than 100 bytes"):
        LocalCluster(Path("/srv") / ("x" * 90))


def test_start_listens_only_on_the_private_socket(cluster: LocalCluster) -> None:
    url = cluster.start()

    assert url == cluster.superuser_url
    assert make_url(url).query["host"] == str(cluster.data_dir / "run")
    assert _query(url, "select current_setting('listen_addresses')") == ""
    assert _query(url, "select current_user") == "postgres"
    assert _query(url, "select current_setting('password_encryption')") == "scram-sha-256"
    encoding = "select pg_encoding_to_char(encoding) from pg_database where datname = 'postgres'"
    assert _query(url, encoding) == "UTF8"
    # Nothing on TCP: the port is free (chosen so), and the server did not take it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", cluster.port))
    # Trust on the socket is only safe because nobody else can get to it.
    for directory in (cluster.data_dir, cluster.data_dir / "run"):
        info = directory.stat()
        assert stat.S_IMODE(info.st_mode) == 0o700, directory
        assert info.st_uid == _server_uid(), directory


def test_start_again_is_a_no_op(cluster: LocalCluster) -> None:
    url = cluster.start()
    started = _query(url, "select pg_postmaster_start_time()")

    assert cluster.start() == url
    assert cluster.is_running()
    assert _query(url, "select pg_postmaster_start_time()") == started


def test_data_survives_stop_and_start(cluster: LocalCluster) -> None:
    url = cluster.start()
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("create table kept (v text)"))
        conn.execute(text("insert into kept values ('still here')"))
    engine.dispose()

    cluster.stop()
    assert not cluster.is_running()
    assert cluster.start() == url

    assert _query(url, "select v from kept") == "still here"


def test_stop_leaves_no_process_behind(cluster: LocalCluster) -> None:
    url = cluster.start()
    assert _processes_in(cluster.data_dir)  # Sanity: the scan does see the running server.
    # An open session must not keep anything alive (fast shutdown disconnects it).
    engine = create_engine(url, poolclass=pool.NullPool)
    conn = engine.connect()
    conn.execute(text("select 1"))

    cluster.stop()

    assert not cluster.is_running()
    assert _processes_in(cluster.data_dir) == []
    assert not (cluster.data_dir / "postmaster.pid").exists()
    assert not (cluster.data_dir / "run" / f".s.PGSQL.{cluster.port}").exists()
    cluster.stop()  # Idempotent.
    conn.invalidate()
    engine.dispose()


def test_stale_postmaster_pid_is_recovered(cluster: LocalCluster) -> None:
    url = cluster.start()
    pidfile = cluster.data_dir / "postmaster.pid"
    lines = pidfile.read_text().splitlines()
    cluster.stop()
    # What a crash or a reboot leaves: a pid file naming a process that no longer exists.
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile.write_text("\n".join([str(gone.pid), *lines[1:]]) + "\n")

    assert not cluster.is_running()
    assert cluster.start() == url
    assert _query(url, "select 1") == 1


def test_two_clusters_run_side_by_side(make_cluster: Callable[[str], LocalCluster]) -> None:
    one, two = make_cluster("one"), make_cluster("two")
    url_one, url_two = one.start(), two.start()
    engine = create_engine(url_one, poolclass=pool.NullPool)
    with engine.begin() as conn:
        conn.execute(text("create table only_in_one ()"))
    engine.dispose()

    assert _query(url_one, "select count(*) from pg_tables where tablename = 'only_in_one'") == 1
    assert _query(url_two, "select count(*) from pg_tables where tablename = 'only_in_one'") == 0
    one.stop()
    assert two.is_running() and not one.is_running()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to the postgres user")
def test_untraversable_parent_is_named(cluster_base: Path) -> None:
    cluster_base.mkdir(mode=0o700)
    os.chmod(cluster_base, 0o700)
    cluster = LocalCluster(cluster_base / "data", port=_free_tcp_port())

    with pytest.raises(ClusterError, match=f"directory {cluster_base} is not traversable"):
        cluster.start()
    assert not (cluster_base / "data").exists()
