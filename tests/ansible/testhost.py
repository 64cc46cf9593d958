"""A fresh Debian 12 host for the Ansible tests, built and torn down by the test itself.

- rootfs: `debootstrap --variant=minbase bookworm` plus systemd, python3, openssh-server, sudo and a
  `deploy` user with passwordless sudo, cached under /var/cache/palisade-test/bookworm-rootfs (a
  stamp file names the recipe; a different recipe rebuilds it). Each run boots a copy.
- network: a bridge in a namespace the test creates, joined to this machine by a veth pair, and one
  namespace per host with its veth on that bridge (TestNetwork; one host or several, the same
  code). The hosts reach each other by name (/etc/hosts) and the host side, which carries an
  allow-listed HTTP proxy (egress_proxy) for the Debian mirrors this machine itself uses: the test
  hosts have no other way out.
- boot: `systemd-nspawn -b --register=no --keep-unit --network-namespace-path=...` (nspawn joins the
  namespace itself: `ip netns exec` would remount /sys and hide the cgroup hierarchy from it).

Everything started here is stopped and removed by `TestHost.stop()` and `TestNetwork.stop()`, which
are safe to call on a half-started host or network.
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


# --- the test network and its hosts --------------------------------------------------------------


def _free_subnet() -> ipaddress.IPv4Network:
    used = run(["ip", "-4", "-o", "addr", "show"]).stdout
    for third in range(40 + os.getpid() % 150, 250):
        net = ipaddress.ip_network(f"10.213.{third}.0/24")
        if f" 10.213.{third}." not in used:
            return net
    raise HostError("no free 10.213.x.0/24 subnet for the test network")


class TestNetwork:
    """One test network: a bridge in a namespace of its own, joined to this machine by a veth pair
    whose host side carries the egress proxy (and anything else the test serves to its hosts), and
    one namespace per host, each with a veth on the bridge. Hosts reach each other and the host side,
    nothing else. Addresses are fixed up front (host side .1, then each host in order), so every
    host's /etc/hosts names all of them."""

    __test__ = False

    def __init__(self, names: list[str]) -> None:
        tag = f"{os.getpid() % 100000}"
        self.tag = tag
        self.netns = f"palisade-test-{tag}"
        self.veth_host = f"pt{tag}h"
        subnet = _free_subnet()
        self.prefix = subnet.prefixlen
        self.host_ip = str(subnet.network_address + 1)
        self.addresses = {name: str(subnet.network_address + 2 + i) for i, name in enumerate(names)}
        self.proxy: EgressProxy | None = None
        self._namespaces: list[str] = []

    def start(self) -> TestNetwork:
        self._add_namespace(self.netns)
        run(["ip", "-n", self.netns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", "uplink", "netns", self.netns])
        run(["ip", "addr", "add", f"{self.host_ip}/{self.prefix}", "dev", self.veth_host])
        run(["ip", "link", "set", self.veth_host, "up"])
        for link in ("br0", "uplink"):
            run(["ip", "-n", self.netns, "link", "set", link, "up"])
        run(["ip", "-n", self.netns, "link", "set", "uplink", "master", "br0"])
        self.proxy = EgressProxy(self.host_ip, PROXY_PORT, mirror_hosts()).start()
        return self

    def attach(self, index: int, ip: str) -> str:
        """A namespace for host number `index` with `ip` on the bridge; returns the namespace's name."""
        netns = f"{self.netns}-{index}"
        self._add_namespace(netns)
        run(["ip", "-n", self.netns, "link", "add", f"h{index}", "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "-n", self.netns, "link", "set", f"h{index}", "master", "br0"])
        run(["ip", "-n", self.netns, "link", "set", f"h{index}", "up"])
        run(["ip", "-n", netns, "link", "set", "lo", "up"])
        run(["ip", "-n", netns, "addr", "add", f"{ip}/{self.prefix}", "dev", "eth0"])
        run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        # A default route, as on any server; nothing forwards beyond the host side of the network.
        run(["ip", "-n", netns, "route", "add", "default", "via", self.host_ip])
        return netns

    def _add_namespace(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._namespaces.append(name)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        for name in reversed(self._namespaces):
            run(["ip", "netns", "delete", name], check=False)
        self._namespaces.clear()
        run(["ip", "link", "delete", self.veth_host], check=False)


class TestHost:
    """One booted test host on a TestNetwork: `start()`, use `ip`, `ssh()`, then `stop()` (always)."""

    __test__ = False  # not a pytest test class

    def __init__(self, workdir: Path, log, network: TestNetwork, hostname: str) -> None:
        self.workdir = workdir
        self.log = log
        self.network = network
        self.hostname = hostname
        self.index = list(network.addresses).index(hostname)
        self.name = f"palisade-test-{network.tag}-{self.index}"
        self.ip = network.addresses[hostname]
        self.host_ip = network.host_ip
        self.root = workdir / "rootfs"
        self.key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self.console_log = workdir / "console.log"
        self._nspawn: subprocess.Popen | None = None

    @property
    def proxy(self) -> EgressProxy:
        assert self.network.proxy is not None
        return self.network.proxy

    # lifecycle

    def boot(self, rootfs: Path) -> None:
        """Copy the rootfs and start systemd-nspawn; `wait()` then waits for SSH."""
        self.started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        run(["cp", "-a", "--reflink=auto", str(rootfs), str(self.root)], timeout=600)
        netns = self.network.attach(self.index, self.ip)
        self._configure_rootfs()
        console = open(self.console_log, "wb")
        self._nspawn = subprocess.Popen(
            ["systemd-nspawn", "--boot", f"--directory={self.root}", f"--machine={self.name}", "--register=no",
             "--keep-unit", f"--network-namespace-path=/run/netns/{netns}", "--resolv-conf=off",
             # A real host's root may set its firewall (nftables) in its own network namespace.
             "--capability=CAP_NET_ADMIN", "--timezone=off", "--console=read-only"],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
        )
        console.close()

    def wait(self) -> TestHost:
        self._wait_for_ssh(timeout=180)
        self.log(f"test host {self.hostname} ({self.name}) at {self.ip} up in {time.monotonic() - self.started:.0f}s")
        return self

    def shut_down(self) -> None:
        """Ask the host to shut down (nspawn turns SIGTERM into an orderly shutdown); `stop()` waits."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self._nspawn is not None and self._nspawn.poll() is None:
            self.shut_down()
            try:
                self._nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self._nspawn.pid, signal.SIGKILL)
                self._nspawn.wait(timeout=30)
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # setup

    def _configure_rootfs(self) -> None:
        etc = self.root / "etc"
        (etc / "hostname").write_text(f"{self.hostname}\n")
        others = "".join(f"{ip} {name}\n" for name, ip in self.network.addresses.items())
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{others}::1 localhost ip6-localhost ip6-loopback\n")
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
def booted_hosts(workdir: Path, log, names: list[str]) -> Iterator[dict[str, TestHost]]:
    """Hosts `names` booted on one test network (in parallel), by name; all stopped afterwards."""
    ensure_tools()
    rootfs = ensure_rootfs(log)
    network = TestNetwork(names)
    hosts = {name: TestHost(workdir / name, log, network, name) for name in names}
    try:
        network.start()
        for host in hosts.values():
            host.boot(rootfs)
        yield {name: host.wait() for name, host in hosts.items()}
    finally:
        for host in hosts.values():  # all at once, then wait for each
            host.shut_down()
        for host in hosts.values():
            host.stop()
        network.stop()
