"""A private, throwaway PostgreSQL cluster living in a local data directory.

Used by ``palisade dev`` (run the appliance on a private local PostgreSQL) and by
the test-suite when no ``PALISADE_TEST_DATABASE_URL`` is given.

The cluster is reachable only through a Unix socket in ``<data_dir>/run`` (mode
0700): ``listen_addresses`` is empty and pg_hba rejects every TCP line, so local
``trust`` authentication is only as open as that socket directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["ClusterError", "LocalCluster", "find_pg_bindir"]

logger = logging.getLogger(__name__)

# Environment variable naming the directory that holds initdb/pg_ctl/postgres.
BINDIR_ENV = "PALISADE_PG_BINDIR"
# initdb, pg_ctl and postgres refuse to run as root; this is who runs them instead.
SERVER_OS_USER = "postgres"
# The bootstrap superuser created by initdb (-U).
SUPERUSER = "postgres"

_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
# sun_path is 108 bytes on Linux and 104 on macOS/BSD (including the NUL); stay well below both.
_MAX_SOCKET_PATH = 100
# pg_ctl pastes -D/-l into a /bin/sh command line inside double quotes, where these are special.
_SHELL_UNSAFE = frozenset('"$`\\\n')
_LOG_TAIL_LINES = 40
_CONF_MARKER = "# --- palisade local cluster (app/db/cluster.py) ---"


class ClusterError(RuntimeError):
    """The local PostgreSQL cluster could not be located, initialised, started or stopped."""


# --------------------------------------------------------------------------- binaries


def _has_server_binaries(bindir: Path) -> bool:
    """True if *bindir* holds executable initdb, pg_ctl and postgres."""
    return all(
        (bindir / name).is_file() and os.access(bindir / name, os.X_OK) for name in _SERVER_BINARIES
    )


def _version_key(path: Path) -> tuple[int, ...]:
    """Numeric sort key from a versioned install dir such as /usr/lib/postgresql/15 or /usr/pgsql-9.6."""
    match = re.search(r"(\d+(?:\.\d+)*)$", path.name)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def find_pg_bindir() -> Path:
    """Return the directory holding the PostgreSQL server binaries (initdb, pg_ctl, postgres)."""
    wanted = ", ".join(_SERVER_BINARIES)
    configured = os.environ.get(BINDIR_ENV)
    if configured:
        bindir = Path(configured).expanduser()
        if _has_server_binaries(bindir):
            return bindir.resolve()
        # An explicit setting that is wrong must fail loudly rather than silently pick another version.
        raise ClusterError(f"{BINDIR_ENV}={configured!r} does not contain executable {wanted}")

    searched: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        searched.append(f"`{pg_config} --bindir`")
        try:
            reported = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=15, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            reported = ""
        # Debian's pg_config ships with libpq-dev and can name a bindir that has no server installed.
        if reported and _has_server_binaries(Path(reported)):
            return Path(reported).resolve()
    else:
        searched.append("pg_config on PATH (not found)")

    # Debian/Ubuntu and RHEL/PGDG install each major version side by side; prefer the newest.
    patterns = ("/usr/lib/postgresql/*", "/usr/pgsql-*")
    searched.extend(f"{pattern}/bin" for pattern in patterns)
    installs = [p for pattern in patterns for p in Path("/").glob(pattern.lstrip("/"))]
    for install in sorted(installs, key=_version_key, reverse=True):
        if _has_server_binaries(install / "bin"):
            return (install / "bin").resolve()

    initdb = shutil.which("initdb")
    searched.append("initdb on PATH" + ("" if initdb else " (not found)"))
    if initdb:
        # Resolve symlinks (e.g. /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb) so that
        # pg_ctl and postgres are taken from the same installation as initdb.
        bindir = Path(initdb).resolve().parent
        if _has_server_binaries(bindir):
            return bindir

    raise ClusterError(
        f"PostgreSQL server binaries ({wanted}) not found; searched {BINDIR_ENV} (unset), "
        + ", ".join(searched)
        + f". Install the PostgreSQL server package or set {BINDIR_ENV}."
    )


def _binaries_major(bindir: Path) -> int | None:
    """Major version of the binaries in *bindir*, from `pg_ctl --version`, or None if unknown."""
    try:
        out = subprocess.run(
            [str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True, timeout=15
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if not match:
        return None
    major = int(match.group(1))
    # Before PostgreSQL 10 the major version was two numbers (9.6); PG_VERSION then says "9.6".
    return major * 100 + int(match.group(2) or 0) if major < 10 else major * 100


# --------------------------------------------------------------------------- server OS user


@dataclass(frozen=True)
class _ServerUser:
    """The OS account that runs initdb/pg_ctl/postgres."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    switch: bool  # True when we are root and must drop to this user for every server command


def _server_user() -> _ServerUser:
    """The current user, or the `postgres` system user when running as root."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return _ServerUser(entry.pw_name, entry.pw_uid, os.getegid(), (), entry.pw_dir, switch=False)
    try:
        entry = pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise ClusterError(
            f"running as root, but PostgreSQL refuses to run as root and there is no "
            f"{SERVER_OS_USER!r} system user to run it as; create one or run as an unprivileged user"
        ) from None
    if entry.pw_uid == 0:
        raise ClusterError(f"system user {SERVER_OS_USER!r} has uid 0; PostgreSQL refuses to run as root")
    # Pass the user's own supplementary groups explicitly: otherwise the child keeps root's groups.
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir, switch=True)


# --------------------------------------------------------------------------- postmaster.pid


@dataclass(frozen=True)
class _PidFile:
    """The fields of postmaster.pid that we use (see PostgreSQL's pidfile.h)."""

    pid: int
    port: int | None
    status: str | None


def _process_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie (an orphaned postmaster may stay unreaped in containers)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # Exists but belongs to someone else; cannot inspect further.
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True  # No /proc (macOS/BSD): existence is all we know.
    return fields[0] != "Z"


def _children_of(pid: int) -> list[int]:
    """Direct children of *pid* according to /proc (empty where there is no /proc)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == str(pid):
                children.append(int(entry.name))
    return children


def _process_cwd(pid: int) -> str | None:
    """The working directory of *pid* via /proc, or None when it cannot be determined."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


# --------------------------------------------------------------------------- the cluster


class LocalCluster:
    """A private PostgreSQL cluster in *data_dir*, reachable only through a Unix socket in it."""

    # Bounds for the slow steps; class attributes so callers/tests can tune them without new API.
    initdb_timeout: float = 180.0
    start_timeout: float = 60.0
    stop_timeout: float = 60.0

    def __init__(self, data_dir: Path, *, port: int = 5433) -> None:
        """Describe the cluster; nothing is created or started until start()."""
        if not 0 < port < 65536:
            raise ClusterError(f"invalid port {port}")
        # abspath (not resolve) keeps the path the caller chose, which is usually the shorter one.
        self.data_dir = Path(os.path.abspath(os.path.expanduser(data_dir)))
        if self.data_dir == self.data_dir.parent:
            raise ClusterError("the data directory cannot be the filesystem root")
        self.port = port
        self.socket_dir = self.data_dir / "run"
        self.log_file = self.data_dir / "server.log"
        self._lock_file = self.data_dir.with_name(self.data_dir.name + ".lock")
        self._bindir: Path | None = None

        unsafe = sorted(_SHELL_UNSAFE.intersection(str(self.data_dir)))
        if unsafe:
            raise ClusterError(
                f"data directory {str(self.data_dir)!r} contains {unsafe!r}, which pg_ctl cannot quote"
            )
        socket_path = self.socket_dir / f".s.PGSQL.{port}"
        if len(os.fsencode(socket_path)) >= _MAX_SOCKET_PATH:
            raise ClusterError(
                f"Unix socket path {str(socket_path)!r} is {len(os.fsencode(socket_path))} bytes; it must "
                f"be shorter than {_MAX_SOCKET_PATH} bytes (OS sun_path limit): use a shorter data directory"
            )

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.data_dir)!r}, port={self.port})"

    # ----------------------------------------------------------------- public API

    @property
    def superuser_url(self) -> str:
        """SQLAlchemy URL for the bootstrap superuser over the cluster's Unix socket."""
        return self.url_for(user=SUPERUSER, database="postgres")

    def url_for(self, *, user: str, database: str, password: str | None = None) -> str:
        """SQLAlchemy (psycopg) URL for *user* on *database* over the cluster's Unix socket."""
        credentials = quote(user, safe="")
        if password is not None:
            credentials += ":" + quote(password, safe="")
        # Keep '/' readable in the host path; everything URL-significant is percent-encoded.
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql+psycopg://{credentials}@/{quote(database, safe='')}?host={host}&port={self.port}"

    def is_running(self) -> bool:
        """True if a postmaster for this data directory is alive (ready or not)."""
        pidfile = self._read_pidfile()
        return pidfile is not None and self._is_our_postmaster(pidfile.pid)

    def start(self) -> str:
        """Initialise on first use, start if not running, wait until ready; return the superuser URL."""
        with self._locked():
            user = _server_user()
            bindir = self._find_bindir()
            self._prepare_data_dir(user)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(user, bindir)
            self._check_version(bindir)
            self._prepare_socket_dir(user)

            pidfile = self._read_pidfile()
            if pidfile is not None and self._is_our_postmaster(pidfile.pid):
                if pidfile.port is not None and pidfile.port != self.port:
                    raise ClusterError(
                        f"{self.data_dir} is already running on port {pidfile.port}, not {self.port}"
                    )
                if self._wait_ready():
                    return self.superuser_url
                # It was shutting down and is gone now: start it again below.
            self._clear_stale_files()
            self._pg_ctl_start(user, bindir)
            return self.superuser_url

    def stop(self) -> None:
        """Fast shutdown; returns once no server process for this data directory is left. Idempotent."""
        if not self.data_dir.is_dir():
            return  # Never started: do not create directories or a lock file just to find that out.
        with self._locked():
            pidfile = self._read_pidfile()
            if pidfile is None or not self._is_our_postmaster(pidfile.pid):
                return
            user = _server_user()
            bindir = self._find_bindir()
            # Remember the backends too: "stopped" means none of them is left, not just the postmaster.
            server_pids = {pidfile.pid, *_children_of(pidfile.pid)}
            # Fast: roll back and disconnect clients. Immediate (crash-like, recovered on next start) only
            # if fast did not finish, then SIGKILL as a last resort so no postmaster is ever left behind.
            for mode, timeout in (("fast", self.stop_timeout), ("immediate", 15.0)):
                result = self._run(
                    user,
                    [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w",
                     "-t", str(max(1, int(timeout))), "stop"],
                    timeout=timeout + 30,
                )
                # Success means pg_ctl saw postmaster.pid go away; the process exits right after that.
                if result.returncode == 0 or not self._is_our_postmaster(pidfile.pid):
                    break
                logger.warning("pg_ctl stop -m %s did not stop %s: %s", mode, self.data_dir, _output(result))
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pidfile.pid, signal.SIGKILL)
            self._wait_until_gone(server_pids)

    # ----------------------------------------------------------------- internals: files and users

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start/stop on this data directory across threads and processes (e.g. xdist workers)."""
        self._make_parents()
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Blocking is bounded: the holder's own steps (initdb, pg_ctl) all have timeouts.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _find_bindir(self) -> Path:
        """find_pg_bindir(), cached per cluster so start and stop use the same installation."""
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        return self._bindir

    def _make_parents(self) -> None:
        """Create missing parent directories; when root, make the ones we create traversable by others."""
        missing: list[Path] = []
        parent = self.data_dir.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                continue  # Someone else created it concurrently; not ours to chmod.
            if os.geteuid() == 0:
                # Only directories we just created: the server user must be able to pass through them.
                os.chmod(directory, stat.S_IMODE(directory.stat().st_mode) | 0o111)

    def _check_traversable(self, user: _ServerUser) -> None:
        """Fail clearly if the server user cannot reach the data directory through its parents."""
        chain: list[str] = []
        for base in (self.data_dir.parent, Path(os.path.realpath(self.data_dir.parent))):
            for directory in [*reversed(base.parents), base]:
                if str(directory) not in chain:
                    chain.append(str(directory))
        # Ask the kernel as the server user (honours groups and ACLs) instead of re-implementing it.
        script = 'for d do [ -x "$d" ] || { printf "%s\\n" "$d"; exit 1; }; done'
        result = self._run(user, ["/bin/sh", "-c", script, "sh", *chain], timeout=30)
        if result.returncode != 0:
            blocked = result.stdout.strip() or "(unknown)"
            raise ClusterError(
                f"directory {blocked} is not traversable by the {user.name!r} user that runs PostgreSQL "
                f"(needs search/x permission), so it cannot reach {self.data_dir}; grant it "
                f"(e.g. chmod o+x {shlex.quote(blocked)}) or choose a data directory elsewhere"
            )

    def _prepare_data_dir(self, user: _ServerUser) -> None:
        """Create or validate the data directory: owned by the server user, mode 0700."""
        if user.switch:
            self._check_traversable(user)
        try:
            self.data_dir.mkdir(mode=0o700)
        except FileExistsError:
            if not self.data_dir.is_dir():
                raise ClusterError(f"{self.data_dir} exists and is not a directory") from None
        initialised = (self.data_dir / "PG_VERSION").exists()
        if not initialised and any(self.data_dir.iterdir()):
            raise ClusterError(f"{self.data_dir} is not empty and is not a PostgreSQL data directory")
        owner = self.data_dir.stat().st_uid
        if owner != user.uid:
            if initialised:
                # Never chown an existing cluster recursively: that is a decision for a human.
                raise ClusterError(
                    f"{self.data_dir} is owned by uid {owner}, but PostgreSQL runs as "
                    f"{user.name!r} (uid {user.uid})"
                )
            try:
                os.chown(self.data_dir, user.uid, user.gid)
            except PermissionError:
                raise ClusterError(
                    f"{self.data_dir} is owned by uid {owner} and cannot be handed to {user.name!r}"
                ) from None
        # postgres refuses group/other access beyond 0750; we want no access for anyone else at all.
        os.chmod(self.data_dir, 0o700)

    def _initdb(self, user: _ServerUser, bindir: Path) -> None:
        """Create the cluster: socket-only access, UTF8, superuser `postgres`, scram passwords."""
        locale_name = _pick_locale()
        args = [
            str(bindir / "initdb"),
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "--encoding=UTF8",
            f"--locale={locale_name}",
            # Anyone who can open the socket (server user and root only, see _prepare_socket_dir) is
            # trusted; every TCP line in pg_hba.conf rejects.
            "--auth-local=trust",
            "--auth-host=reject",
        ]
        logger.info("initialising PostgreSQL cluster in %s (%s)", self.data_dir, bindir)
        result = self._run(user, args, timeout=self.initdb_timeout)
        if result.returncode != 0:
            raise ClusterError(f"initdb failed for {self.data_dir}:\n{_output(result)}")
        settings = "\n".join(
            [
                "",
                _CONF_MARKER,
                "# Unix socket only: nothing listens on TCP (pg_hba.conf rejects host lines as well).",
                "listen_addresses = ''",
                f"unix_socket_directories = '{_conf_quote(str(self.socket_dir))}'",
                "unix_socket_permissions = 0700",
                "password_encryption = 'scram-sha-256'",
                "",
            ]
        )
        # Appending as root keeps the file's owner (the server user).
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(settings)

    def _check_version(self, bindir: Path) -> None:
        """Refuse to start a data directory with binaries of another major version, with a clear hint."""
        recorded = (self.data_dir / "PG_VERSION").read_text().strip()
        major = _binaries_major(bindir)
        if major is None or not re.fullmatch(r"\d+(\.\d+)?", recorded):
            return  # Unknown: let postgres itself complain (the log tail is reported).
        whole, _, minor = recorded.partition(".")
        if int(whole) * 100 + int(minor or 0) != major:
            found = f"{major // 100}" if major >= 1000 else f"{major // 100}.{major % 100}"
            raise ClusterError(
                f"{self.data_dir} was initialised by PostgreSQL {recorded}, but the binaries in {bindir} "
                f"are PostgreSQL {found}; set {BINDIR_ENV} to a {recorded} installation "
                "or remove the directory"
            )

    def _prepare_socket_dir(self, user: _ServerUser) -> None:
        """Create <data_dir>/run as a real directory, mode 0700, owned by the server user."""
        try:
            self.socket_dir.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = os.lstat(self.socket_dir)
        if not stat.S_ISDIR(info.st_mode):
            raise ClusterError(f"{self.socket_dir} exists and is not a directory")
        if info.st_uid != user.uid or info.st_gid != user.gid:
            os.chown(self.socket_dir, user.uid, user.gid)
        # Trust auth makes this directory the only access control: nobody but the server user (and root).
        os.chmod(self.socket_dir, 0o700)

    def _read_pidfile(self) -> _PidFile | None:
        """Parse postmaster.pid, or None if absent or unreadable (e.g. half-written)."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        status = lines[7].strip() if len(lines) > 7 else None
        return _PidFile(pid=pid, port=port, status=status)

    def _is_our_postmaster(self, pid: int) -> bool:
        """True if *pid* is alive and (where /proc can tell) is a postgres running in this data directory."""
        if not _process_alive(pid):
            return False
        cwd = _process_cwd(pid)
        if cwd is None:
            # No /proc (macOS/BSD) or not ours to inspect: trust liveness; re-check in case it just exited.
            return _process_alive(pid)
        # The postmaster chdirs into its data directory; a reused PID (stale postmaster.pid) will not.
        return os.path.realpath(cwd) == os.path.realpath(self.data_dir)

    def _clear_stale_files(self) -> None:
        """Remove postmaster.pid and socket files left by a postmaster that is no longer running."""
        # Only called under the lock with no live postmaster for this data dir, and run/ is private to it.
        stale = [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*")]
        for path in stale:
            if path.exists() or path.is_symlink():
                logger.warning("removing stale %s", path)
                path.unlink(missing_ok=True)

    def _wait_ready(self) -> bool:
        """Wait (bounded) for a running postmaster to accept connections; False if it exits meanwhile."""
        deadline = time.monotonic() + self.start_timeout
        socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        while True:
            pidfile = self._read_pidfile()
            if pidfile is None or not self._is_our_postmaster(pidfile.pid):
                return False
            if pidfile.status == "ready" and socket_path.exists():
                return True
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"PostgreSQL in {self.data_dir} did not become ready within {self.start_timeout:.0f}s "
                    f"(status {pidfile.status!r})\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _wait_until_gone(self, pids: set[int]) -> None:
        """Wait (bounded) until every process in *pids* has exited."""
        deadline = time.monotonic() + 15.0
        while True:
            left = sorted(pid for pid in pids if _process_alive(pid))
            if not left:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"PostgreSQL processes {left} for {self.data_dir} did not exit")
            time.sleep(0.05)

    def _log_tail(self) -> str:
        """The last lines of the server log, for error messages."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(server log {self.log_file} unavailable: {exc})"
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"--- last lines of {self.log_file} ---\n{tail}"

    # ----------------------------------------------------------------- internals: processes

    def _pg_ctl_start(self, user: _ServerUser, bindir: Path) -> None:
        """Start the postmaster on the private socket with pg_ctl and wait until it is ready."""
        # pg_ctl runs this through /bin/sh, hence the shell quoting; listen_addresses='' turns off TCP.
        options = f"-k {shlex.quote(str(self.socket_dir))} -p {self.port} -c listen_addresses=''"
        timeout = max(1, int(self.start_timeout))
        args = [
            str(bindir / "pg_ctl"),
            "-D", str(self.data_dir),
            "-l", str(self.log_file),
            "-o", options,
            "-w", "-t", str(timeout),
            "start",
        ]
        logger.info(
            "starting PostgreSQL in %s (socket %s, port %d)", self.data_dir, self.socket_dir, self.port
        )
        result = self._run(user, args, timeout=timeout + 30)
        if result.returncode == 0 and self._wait_ready():
            return
        # pg_ctl gives up after -t but leaves a slow server running: do not leave it behind.
        if self.is_running():
            self._run(
                user,
                [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"],
                timeout=60,
            )
        raise ClusterError(
            f"could not start PostgreSQL in {self.data_dir}:\n{_output(result)}\n{self._log_tail()}"
        )

    def _run(
        self, user: _ServerUser, args: Sequence[str], *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """Run a server command as the server user with a clean environment; bounded by *timeout*."""
        # PG* variables (PGDATA, PGPORT, PGHOST...) from the caller's shell must not redirect the cluster.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "LANGUAGE"}
        env["LC_ALL"] = "C"  # Stable, English messages for errors we show; initdb gets --locale itself.
        if user.switch:
            env.update(HOME=user.home, USER=user.name, LOGNAME=user.name)
        try:
            return subprocess.run(
                list(args),
                capture_output=True,
                text=True,
                errors="replace",
                env=env,
                # The caller's cwd (e.g. /root) may be unreadable for the server user.
                cwd="/",
                umask=0o077,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                # As root: become the server user, with its own groups rather than root's.
                user=user.uid if user.switch else None,
                group=user.gid if user.switch else None,
                extra_groups=list(user.groups) if user.switch else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"{Path(args[0]).name} timed out after {timeout:.0f}s\n{self._log_tail()}"
            ) from exc
        except OSError as exc:
            raise ClusterError(f"could not run {args[0]}: {exc}") from exc


def _pick_locale() -> str:
    """C.UTF-8 if the system has it, else C (which is valid with any encoding)."""
    # Probe in a child: setlocale() is process-global and not thread-safe.
    probe = subprocess.run(
        [sys.executable, "-c", "import locale; locale.setlocale(locale.LC_ALL, 'C.UTF-8')"],
        capture_output=True,
        timeout=30,
    )
    return "C.UTF-8" if probe.returncode == 0 else "C"


def _conf_quote(value: str) -> str:
    """Escape a value for a single-quoted postgresql.conf string."""
    return value.replace("\\", "\\\\").replace("'", "''")


def _output(result: subprocess.CompletedProcess[str]) -> str:
    """Combined stdout/stderr of a finished command, for error messages."""
    return "\n".join(part.strip() for part in (result.stdout, result.stderr) if part and part.strip())
