"""A fresh Debian 12 host for the Ansible tests, built and torn down by the test itself.

- rootfs: `debootstrap --variant=minbase bookworm` plus systemd, python3, openssh-server, sudo and a
  `deploy` user with passwordless sudo, cached under /var/cache/palisade-test/bookworm-rootfs (a
  stamp file names the recipe; a different recipe rebuilds it). Each run boots a copy.
- network: a namespace the test creates, joined to the host by a veth pair; the host side carries
  an allow-listed HTTP proxy (egress_proxy) for the Debian mirrors this machine itself uses: the
  test host has no other way out.
- boot: `systemd-nspawn -b --register=no --keep-unit --network-namespace-path=...` (nspawn joins the
  namespace itself: `ip netns exec` would remount /sys and hide the cgroup hierarchy from it).

Everything started here is stopped and removed by `TestHost.stop()`, which is safe to call on a
half-started host.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from egress_proxy import EgressProxy

CACHE_DIR = Path(os.environ.get("PALISADE_TEST_CACHE", "/var/cache/palisade-test"))
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "sudo", "iproute2", "ca-certificates")
# Masked in the image: apt's timers would take the dpkg lock in the middle of a run.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer")
RECIPE = f"v1 {SUITE} minbase include={','.join(PACKAGES)} user=deploy(sudo nopasswd) masked={','.join(MASKED_UNITS)}"
DEPLOY_USER = "deploy"
HOSTNAME = "palisade-test"
PROXY_PORT = 3128


class HostError(RuntimeError):
    pass


def run(cmd: list[str], *, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise HostError(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


# --- tools ----------------------------------------------------------------------------------------


def ensure_tools() -> None:
    """systemd-nspawn and debootstrap, installed from Debian's packages when missing.

    Raises HostError (the test fails, never skips) when they cannot be had: CI must not pass
    without the host-level test having run.
    """
    packages = {"systemd-nspawn": "systemd-container", "debootstrap": "debootstrap", "ip": "iproute2",
                "ssh": "openssh-client", "ssh-keygen": "openssh-client"}
    missing = sorted({packages[tool] for tool in packages if shutil.which(tool) is None})
    if missing:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True, timeout=600, env=env).returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300, env=env)
            subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True, timeout=600, env=env)
    still = [tool for tool in packages if shutil.which(tool) is None]
    if still:
        raise HostError(
            f"the host-level Ansible test needs {', '.join(still)} (Debian packages {', '.join(missing)}) and could "
            "not install them with apt-get; it fails rather than skips"
        )
    if os.geteuid() != 0:
        raise HostError("the host-level Ansible test needs root (debootstrap, network namespaces, systemd-nspawn)")


# --- Debian mirrors -------------------------------------------------------------------------------


def host_apt_sources() -> list[tuple[str, list[str], list[str]]]:
    """The enabled apt sources of this machine, as (uri, suites, components)."""
    sources: list[tuple[str, list[str], list[str]]] = []
    apt = Path("/etc/apt")
    files = [apt / "sources.list"] + sorted((apt / "sources.list.d").glob("*"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
                if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"])[0].lower() == "no":
                    continue
                for uri in fields.get("uris", []):
                    sources.append((uri, fields.get("suites", []), fields.get("components", [])))
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                parts = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    sources.append((parts[1], [parts[2]], parts[3:]))
    return sources


def debian_sources() -> list[tuple[str, list[str], list[str]]]:
    """This machine's sources for Debian 12 (what the test host uses too), or deb.debian.org."""
    found = [(uri, suites, comps) for uri, suites, comps in host_apt_sources()
             if uri.startswith("http") and any(s.startswith(SUITE) for s in suites)]
    if not found:
        found = [(DEFAULT_MIRROR, [SUITE, f"{SUITE}-updates"], ["main"]),
                 ("http://deb.debian.org/debian-security", [f"{SUITE}-security"], ["main"])]
    return found


def mirror_hosts() -> set[str]:
    return {urlsplit(uri).hostname for uri, _, _ in debian_sources() if urlsplit(uri).hostname}


# --- rootfs ---------------------------------------------------------------------------------------


def ensure_rootfs(log) -> Path:
    """The cached Debian 12 rootfs, built on first use (a few minutes) and reused afterwards."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    final = CACHE_DIR / f"{SUITE}-rootfs"
    stamp = final / ".palisade-rootfs"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text() == RECIPE:
            return final
        partial = CACHE_DIR / f"{SUITE}-rootfs.partial"
        done = partial / ".debootstrap-complete"
        if not done.exists() or done.read_text() != RECIPE:
            shutil.rmtree(partial, ignore_errors=True)
            mirror = next((uri for uri, suites, _ in debian_sources() if SUITE in suites), DEFAULT_MIRROR)
            log(f"debootstrap {SUITE} from {mirror} into {partial} (first run only; a few minutes)")
            started = time.monotonic()
            run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(partial), mirror],
                timeout=1800)
            log(f"debootstrap took {time.monotonic() - started:.0f}s")
            done.write_text(RECIPE)
        _customise_rootfs(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        (final / ".debootstrap-complete").unlink()
        stamp.write_text(RECIPE)
        return final


def _customise_rootfs(root: Path) -> None:
    if run(["chroot", str(root), "id", DEPLOY_USER], check=False).returncode != 0:
        run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash", DEPLOY_USER])
    sudoers = root / "etc/sudoers.d" / DEPLOY_USER
    sudoers.write_text(f"{DEPLOY_USER} ALL=(ALL) NOPASSWD: ALL\n")
    sudoers.chmod(0o440)
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        if not link.is_symlink():
            link.symlink_to("/dev/null")
    run(["chroot", str(root), "apt-get", "clean"])


# --- the host -------------------------------------------------------------------------------------


def _free_subnet() -> ipaddress.IPv4Network:
    used = run(["ip", "-4", "-o", "addr", "show"]).stdout
    for third in range(40 + os.getpid() % 150, 250):
        net = ipaddress.ip_network(f"10.213.{third}.0/24")
        if f" 10.213.{third}." not in used:
            return net
    raise HostError("no free 10.213.x.0/24 subnet for the test network")


class TestHost:
    """One booted test host: `start()`, use `ip`, `ssh()`, then `stop()` (always)."""

    __test__ = False  # not a pytest test class

    def __init__(self, workdir: Path, log) -> None:
        self.workdir = workdir
        self.log = log
        tag = f"{os.getpid() % 100000}"
        self.name = f"palisade-test-{tag}"
        self.netns = self.name
        self.veth_host, self.veth_guest = f"pt{tag}h", f"pt{tag}g"
        subnet = _free_subnet()
        self.host_ip, self.ip = str(subnet.network_address + 1), str(subnet.network_address + 2)
        self.prefix = subnet.prefixlen
        self.root = workdir / "rootfs"
        self.key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self.console_log = workdir / "console.log"
        self.proxy: EgressProxy | None = None
        self._nspawn: subprocess.Popen | None = None
        self._netns_created = False

    # lifecycle

    def start(self, rootfs: Path) -> TestHost:
        started = time.monotonic()
        run(["cp", "-a", "--reflink=auto", str(rootfs), str(self.root)], timeout=600)
        self._network()
        self.proxy = EgressProxy(self.host_ip, PROXY_PORT, mirror_hosts()).start()
        self._configure_rootfs()
        console = open(self.console_log, "wb")
        self._nspawn = subprocess.Popen(
            ["systemd-nspawn", "--boot", f"--directory={self.root}", f"--machine={self.name}", "--register=no",
             "--keep-unit", f"--network-namespace-path=/run/netns/{self.netns}", "--resolv-conf=off",
             # A real host's root may set its firewall (nftables) in its own network namespace.
             "--capability=CAP_NET_ADMIN", "--timezone=off", "--console=read-only"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
        )
        console.close()
        self._wait_for_ssh(timeout=120)
        self.log(f"test host {self.name} at {self.ip} up in {time.monotonic() - started:.0f}s")
        return self

    def stop(self) -> None:
        if self._nspawn is not None and self._nspawn.poll() is None:
            # nspawn turns SIGTERM into an orderly shutdown of the container's systemd.
            self._nspawn.send_signal(signal.SIGTERM)
            try:
                self._nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self._nspawn.pid, signal.SIGKILL)
                self._nspawn.wait(timeout=30)
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self._netns_created:
            run(["ip", "netns", "delete", self.netns], check=False)
            self._netns_created = False
        run(["ip", "link", "delete", self.veth_host], check=False)
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # setup

    def _network(self) -> None:
        run(["ip", "netns", "add", self.netns])
        self._netns_created = True
        run(["ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_guest, "netns", self.netns])
        run(["ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.veth_host])
        run(["ip", "link", "set", self.veth_host, "up"])
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        run(["ip", "-n", self.netns, "addr", "add", f"{self.ip}/{self.prefix}", "dev", self.veth_guest])
        run(["ip", "-n", self.netns, "link", "set", self.veth_guest, "up"])
        # A default route, as on any server; nothing forwards beyond the host side of the veth.
        run(["ip", "-n", self.netns, "route", "add", "default", "via", self.host_ip])

    def _configure_rootfs(self) -> None:
        etc = self.root / "etc"
        (etc / "hostname").write_text(f"{HOSTNAME}\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{self.ip} {HOSTNAME}\n::1 localhost ip6-localhost ip6-loopback\n")
        resolv = etc / "resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text("# no DNS on the test network: apt goes through the proxy\nnameserver 127.0.0.1\n")
        (etc / "apt/apt.conf.d/01palisade-test-proxy").write_text(
            f'Acquire::http::Proxy "{self.proxy.url}";\nAcquire::https::Proxy "{self.proxy.url}";\n'
            'Acquire::http::Pipeline-Depth "0";\nAcquire::Retries "3";\n'
        )
        lines = [f"deb {uri} {suite} {' '.join(comps or ['main'])}" for uri, suites, comps in debian_sources() for suite in suites]
        (etc / "apt/sources.list").write_text("\n".join(lines) + "\n")
        for extra in (etc / "apt/sources.list.d").glob("*"):
            extra.unlink()
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "palisade-ansible-test", "-f", str(self.key)])
        ssh_dir = self.root / "home" / DEPLOY_USER / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        uid, gid = _passwd_ids(self.root, DEPLOY_USER)
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, uid, gid)
        (ssh_dir / "authorized_keys").chmod(0o600)

    def _wait_for_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise HostError(f"systemd-nspawn exited {self._nspawn.returncode}:\n{self.console_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((self.ip, 22), timeout=2):
                if self.ssh("true", check=False, timeout=15).returncode == 0:
                    return
            time.sleep(1)
        raise HostError(f"no SSH on {self.ip} after {timeout:.0f}s:\n{self.console_tail()}")

    # use

    def ssh_args(self) -> list[str]:
        return ["-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]

    def ssh(self, command: str, *, check: bool = True, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess:
        return run(["ssh", *self.ssh_args(), f"{DEPLOY_USER}@{self.ip}", command], check=check, timeout=timeout, input=input)

    def console_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.console_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console log)"


def _passwd_ids(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2]), int(fields[3])
    raise HostError(f"no user {user} in the rootfs")


@contextlib.contextmanager
def booted_host(workdir: Path, log) -> Iterator[TestHost]:
    ensure_tools()
    rootfs = ensure_rootfs(log)
    host = TestHost(workdir, log)
    try:
        yield host.start(rootfs)
    finally:
        host.stop()
