"""A multi-host lab on one machine: a network namespace and a dockerd per host, one underlay.

Layout (lab `x`): namespace `sl-x-ul` holds bridge `br0` (the simulated wire, netfilter off);
`sl-x-srv` is the server host at 192.0.2.2/24; `sl-x-h1`.. are hosts at 192.0.2.11.. /24, each
with `eth0` cabled to the bridge, its own dockerd (bridge 172.30.<i>.1/24, DNS = its own
underlay address so container lookups never leave the lab) and its own /var/run/wireguard.
No namespace has a default route: nothing the lab does reaches the machine's network.
The server host also runs the lab's upstream resolver (`shoal.lab.upstream_dns`, zone
`lab.test`) on 192.0.2.2:53, and commands on a host see a resolv.conf naming it, so what a host
forwards upstream (the agent reads /etc/resolv.conf) stays in the lab too.

Everything created is recorded in `root/x/lab.json` before it is made, so `Lab.load(x).destroy()`
works from any process and after an aborted create. The shoal server and agents are driven
through the `shoal` CLI as subprocesses; this module never imports their code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from shoal.lab import images, procs
from shoal.lab import nat as natlab
from shoal.lab.errors import LabCommandFailed, LabError, LabNotFound
from shoal.lab.image import IMAGE, busybox_tar
from shoal.lab.state import STATE_FILE, HostRecord, LabState, ProcRecord

DEFAULT_ROOT = Path("/run/shoal-lab")
SERVER_IP = IPv4Address("192.0.2.2")
HOST_IP_BASE = IPv4Address("192.0.2.10")  # host i is at .10 + i
OUTSIDER_IP = IPv4Address("192.0.2.250")  # a machine on the underlay that is no mesh member
SERVER_PORT = 8443
DNS_PORT = 53  # the lab's upstream resolver (shoal.lab.upstream_dns) on SERVER_IP
RESOLV_CONF = Path("/etc/resolv.conf")
UNDERLAY_PREFIX = 24
WG_RUN_DIR = Path("/var/run/wireguard")
MAX_HOSTS = 200
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")
_TOOLS = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "sh": "dash",
    "dockerd": "docker.io",
    "docker": "docker.io",
}


def progress(message: str) -> None:
    """One line per long step, on stderr."""
    print(f"lab: {message}", file=sys.stderr, flush=True)


def shoal_argv() -> list[str]:
    """How to run the `shoal` CLI of this very installation."""
    return [sys.executable, "-m", "shoal.cli.main"]


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    shown: Sequence[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output; failures become LabError (`shown` names it)."""
    name = list(shown if shown is not None else argv)
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=env, input=input
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(name)!r} timed out after {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"{argv[0]} not found: run scripts/install-deps.sh") from exc
    if check and proc.returncode != 0:
        raise LabCommandFailed(name, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def listening(pid: int, port: int) -> bool:
    """True if a TCP socket listens on `port` in the network namespace of `pid`."""
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


class LabHost:
    """One simulated host: a network namespace, its dockerd and its /var/run/wireguard.

    `exec`/`popen` run a command "on" the host: in its network namespace, in a private mount
    namespace where `wg_run_dir` is bound over /var/run/wireguard (wireguard-go's sockets are
    per host) and `resolv_conf` (nameserver 192.0.2.2, the lab's resolver) over
    /etc/resolv.conf, with DOCKER_HOST pointing at the host's dockerd and this shoal's bin dir first
    on PATH.
    """

    def __init__(self, lab: Lab, record: HostRecord) -> None:
        self._lab = lab
        self.name = record.name
        self.index = record.index
        self.netns = record.netns
        self.underlay_ip = IPv4Address(record.underlay_ip)  # its own address (LAN if NATed)
        self.nat = record.nat  # None: on the underlay ("public"); else its NAT's kind
        self.router = record.router
        # Where the underlay sees it: its NAT router's address, or its own.
        self.public_ip = IPv4Address(record.public_ip or record.underlay_ip)
        self.dir = lab.dir / record.name
        self.docker_sock = self.dir / "docker.sock"
        self.docker_host = f"unix://{self.docker_sock}"
        self.state_dir = self.dir / "agent"
        self.wg_run_dir = self.dir / "wireguard"
        self.resolv_conf = self.dir / "resolv.conf"
        self.dockerd_log = self.dir / "dockerd.log"

    def __repr__(self) -> str:
        return f"LabHost({self.name!r}, {self.underlay_ip}, netns={self.netns!r})"

    # -- commands on the host ---------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """The full command line that runs `argv` on this host (see the class docstring)."""
        if not argv:
            raise LabError("no command given")
        WG_RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.wg_run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resolv_conf.exists():
            self.resolv_conf.write_text(f"nameserver {SERVER_IP}\n")
        script = (
            'mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 5 && '
            'exec nsenter --net="$0" -- "$@"'
        )
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(procs.NETNS_DIR / self.netns),
            str(self.wg_run_dir),
            str(WG_RUN_DIR),
            str(self.resolv_conf),
            str(RESOLV_CONF),
            "--",
            *argv,
        ]

    def environ(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for commands on this host: ours, DOCKER_HOST, `env` on top."""
        out = dict(os.environ)
        out["DOCKER_HOST"] = self.docker_host
        bindir = os.path.dirname(sys.executable)
        out["PATH"] = f"{bindir}:{out.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        out.update(env or {})
        return out

    def exec(
        self,
        argv: Sequence[str],
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` on the host, wait, capture text output. LabCommandFailed if check and rc≠0."""
        return run(
            self.command(argv),
            check=check,
            timeout=timeout * self._lab._patience,
            env=self.environ(env),
            input=input,
            shown=[f"{self.name}:", *argv],
        )

    def popen(
        self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` on the host, detached (own session), output appended to `log`.

        The PID is recorded in the lab state: `Lab.destroy` stops it."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.command(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environ(env),
                start_new_session=True,
            )
        self._lab._record_proc(proc.pid, "process", " ".join(argv), host=self.name)
        return proc

    # -- docker on the host -----------------------------------------------------------------

    def docker(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this host's dockerd."""
        return run(
            ["docker", "-H", self.docker_host, *args],
            check=check,
            timeout=timeout * self._lab._patience,
            shown=[f"{self.name}: docker", *args],
        )

    def docker_popen(self, args: Sequence[str]) -> subprocess.Popen[str]:
        """Start the docker CLI against this host's dockerd in the background; stdout and
        stderr together on a text pipe (`communicate()` it). Not recorded: it ends with dockerd."""
        return subprocess.Popen(
            ["docker", "-H", self.docker_host, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run_container(
        self,
        name: str,
        network: str = "shoal",
        image: str = IMAGE,
        cmd: Sequence[str] = ("sleep", "infinity"),
        options: Sequence[str] = (),
    ) -> str:
        """`docker run -d` a container; returns its id. `options` go before the image."""
        out = self.docker("run", "-d", "--name", name, "--network", network, *options, image, *cmd)
        return out.stdout.strip()

    def container_exec(
        self, name: str, argv: Sequence[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`docker exec` in a container of this host."""
        return self.docker("exec", name, *argv, check=check, timeout=timeout)

    def _inspect(self, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.docker("inspect", name).stdout)
        return data[0]

    def container_ip(self, name: str, network: str = "shoal") -> IPv4Address:
        """The container's IPv4 address on `network`."""
        networks: dict[str, Any] = self._inspect(name)["NetworkSettings"]["Networks"]
        if network not in networks or not networks[network].get("IPAddress"):
            raise LabError(f"{self.name}: container {name} has no address on network {network}")
        return IPv4Address(networks[network]["IPAddress"])

    def container_pid(self, name: str) -> int:
        """The host PID of the container's init (for `nsenter -t PID -n`)."""
        pid = int(self._inspect(name)["State"]["Pid"])
        if pid <= 0:
            raise LabError(f"{self.name}: container {name} is not running")
        return pid

    def dockerd_running(self) -> bool:
        return any(
            p.kind == "dockerd" and p.host == self.name and procs.is_alive(p.pid, p.start)
            for p in self._lab._state.procs
        )


class LabOutsider:
    """A machine on the underlay that is not in the mesh (see `Lab.add_outsider`): a network
    namespace with an underlay address and no shoal, dockerd or WireGuard."""

    def __init__(self, netns: str, ip: IPv4Address) -> None:
        self.netns = netns
        self.ip = ip

    def __repr__(self) -> str:
        return f"LabOutsider({self.ip}, netns={self.netns!r})"

    def exec(
        self, argv: Sequence[str], check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the outsider's network namespace (the machine's filesystem)."""
        return run(
            ["nsenter", f"--net={procs.NETNS_DIR / self.netns}", *argv],
            check=check,
            timeout=timeout,
            shown=["outsider:", *argv],
        )


class Lab:
    """A lab: create with `Lab.create`, find from another process with `Lab.load`."""

    def __init__(self, state: LabState) -> None:
        self._state = state
        self._patience = 1.0  # see `create`
        self.name = state.name
        self.root = Path(state.root)
        self.dir = self.root / state.name

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, hosts={[h.name for h in self.hosts]})"

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- naming -----------------------------------------------------------------------------

    @property
    def underlay_netns(self) -> str:
        return f"sl-{self.name}-ul"

    @property
    def server_netns(self) -> str:
        return f"sl-{self.name}-srv"

    @property
    def server_data_dir(self) -> Path:
        return self.dir / "server"

    @property
    def server_log(self) -> Path:
        return self.dir / "server.log"

    @property
    def upstream_dns_log(self) -> Path:
        return self.dir / "upstream-dns.log"

    @property
    def server_url(self) -> str | None:
        return self._state.server_url

    @property
    def token(self) -> str | None:
        """The reusable join token made by `create_token` (None before)."""
        return self._state.token

    @property
    def persistent(self) -> bool:
        return self._state.persistent

    @property
    def hosts(self) -> tuple[LabHost, ...]:
        return tuple(LabHost(self, h) for h in self._state.hosts)

    def host(self, name: str) -> LabHost:
        for h in self._state.hosts:
            if h.name == name:
                return LabHost(self, h)
        known = ", ".join(h.name for h in self._state.hosts) or "none"
        raise LabError(f"lab {self.name} has no host {name!r} (hosts: {known})")

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        hosts: int,
        root: Path = DEFAULT_ROOT,
        *,
        persistent: bool = False,
        patience: float = 1.0,
        nat: Mapping[str, natlab.NatSpec] | None = None,
    ) -> Lab:
        """Make the underlay, the server host and `hosts` hosts with a running dockerd each.

        `nat` puts hosts (by name, h1..) behind NAT routers (see `shoal.lab.nat`).
        `persistent` labs (made by `shoal lab up`) outlive their creator and are not swept.
        `patience` multiplies how long the daemons the lab starts may take to answer and the
        timeouts of commands on its hosts (an emulated VM needs several times longer).
        Fails with LabError, having removed whatever it made."""
        _preflight(name, hosts)
        nat = dict(nat or {})
        unknown = sorted(set(nat) - {f"h{i}" for i in range(1, hosts + 1)})
        if unknown:
            raise LabError(f"--nat names hosts the lab will not have: {', '.join(unknown)}")
        directory = root / name
        if directory.exists() or (procs.NETNS_DIR / f"sl-{name}-ul").exists():
            raise LabError(f"lab {name} already exists: run `shoal lab down --name {name}`")
        directory.mkdir(parents=True)
        state = LabState(
            name=name,
            root=str(root),
            owner_pid=os.getpid(),
            owner_start=procs.start_time(os.getpid()),
            persistent=persistent,
            created_at=time.time(),
        )
        state.save(directory)
        lab = cls(state)
        lab._patience = patience
        started = time.monotonic()
        try:
            progress(f"creating lab {name} with {hosts} hosts in {directory}")
            (directory / "daemon.json").write_text("{}\n")
            lab._make_underlay()
            lab._add_netns_host(lab.server_netns, "vsrv", SERVER_IP)
            lab._start_upstream_dns()
            lab._add_hosts(hosts, nat)
        except BaseException as exc:
            progress(f"create failed, removing lab {name}")
            lab.destroy()
            if isinstance(exc, Exception) and not isinstance(exc, LabError):
                raise LabError(f"creating lab {name} failed: {exc}") from exc
            raise
        progress(f"lab {name} ready in {time.monotonic() - started:.1f} s")
        return lab

    @classmethod
    def load(cls, name: str, root: Path = DEFAULT_ROOT) -> Lab:
        """The lab `name` as recorded under `root`; LabNotFound if there is none."""
        path = root / name / STATE_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise LabNotFound(f"no lab named {name} (no {path})") from None
        try:
            return cls(LabState.from_json(text))
        except (ValueError, TypeError) as exc:
            raise LabError(f"unreadable lab state {path}: {exc}") from exc

    @classmethod
    def exists(cls, name: str, root: Path = DEFAULT_ROOT) -> bool:
        return (root / name / STATE_FILE).exists()

    def add_host(self, *, docker: bool = True) -> LabHost:
        """Add one more host (netns + dockerd + image) to the running lab; without `docker`,
        a host with no dockerd (a laptop, a VM: `shoal up --no-docker`)."""
        return self._add_hosts(1, docker=docker)[0]

    def add_hosts(self, count: int) -> list[LabHost]:
        return self._add_hosts(count)

    def load_images(self, tags: Collection[str] | None = None) -> tuple[str, ...]:
        """The lab's images named by `tags` (all when None: redis, postgres, app, sidecar; see
        `shoal.lab.images`) on every host: built first if this machine has none of their
        recipe, loaded into the dockerds in parallel, skipped where already loaded; hosts
        without Docker (`add_host(docker=False)`) are left out. Returns their tags."""
        images.build_for(tags)
        hosts = [h for h in self.hosts if h.dockerd_running()]
        with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
            list(pool.map(lambda h: images.load(h.docker, h.dir, tags), hosts))
        return tuple(i.tag for i in images.select(tags))

    def add_outsider(self, via: LabHost, routes: Sequence[IPv4Network]) -> LabOutsider:
        """A non-member on the underlay (at OUTSIDER_IP) that routes `routes` (say both of the
        mesh's pools) via `via`'s underlay address: what an attacker on the hosts' network
        does to reach the mesh without a key. Removed by `destroy` with the rest."""
        ns = f"sl-{self.name}-out"
        if (procs.NETNS_DIR / ns).exists():
            raise LabError(f"lab {self.name} already has an outsider ({ns})")
        self._add_netns_host(ns, "vout", OUTSIDER_IP)
        for prefix in routes:
            run(["ip", "-n", ns, "route", "add", str(prefix), "via", str(via.underlay_ip)])
        return LabOutsider(ns, OUTSIDER_IP)

    def add_lan(self, via: LabHost, prefix: IPv4Network) -> LabOutsider:
        """A network behind `via` that is not Docker's (a LAN, a VPC subnet): a namespace
        wired to `via` by a veth (`lan0` there, at `prefix`'s first address) holding one
        machine at its second address, with no route beyond `prefix` (whatever reaches it
        from elsewhere must be masqueraded by `via`). What `--advertise-routes` offers the
        mesh. Removed by `destroy` with the rest."""
        ns = f"sl-{self.name}-lan{via.index}"
        if (procs.NETNS_DIR / ns).exists():
            raise LabError(f"host {via.name} of lab {self.name} already has a LAN ({ns})")
        gateway, machine = prefix[1], prefix[2]
        self._new_netns(ns)
        run(["ip", "-n", via.netns, "link", "add", "lan0", "type", "veth", "peer", "name",
             "eth0", "netns", ns])  # fmt: skip
        run(["ip", "-n", via.netns, "addr", "add", f"{gateway}/{prefix.prefixlen}", "dev", "lan0"])
        run(["ip", "-n", via.netns, "link", "set", "lan0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{machine}/{prefix.prefixlen}", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        return LabOutsider(ns, machine)

    def destroy(self) -> None:
        """Remove everything the lab made; works on a partial state. Idempotent."""
        progress(f"removing lab {self.name}")
        st = self._state
        # 1. Containers first: a `sleep` as PID 1 ignores SIGTERM, dockerd would wait 10 s each.
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(_remove_containers, [h for h in self.hosts if h.dockerd_running()]))
        # 2. What we started, by recorded PID: agents and server first, then the dockerds
        #    (an agent stopping may still talk to its dockerd).
        procs.stop([(p.pid, p.start) for p in st.procs if p.kind != "dockerd"], timeout=5)
        procs.stop([(p.pid, p.start) for p in st.procs if p.kind == "dockerd"], timeout=15)
        # 3. Anything still in our namespaces (wireguard-go, containerd, shims, containers).
        for _ in range(5):
            stray = procs.stray_pids(st.netns, self.dir)
            if not stray:
                break
            procs.kill(stray)
        # 4. Mounts under the state dir (overlay2, container netns bind mounts), deepest first.
        if self.dir.exists():
            procs.umount_lazy(procs.mounts_under(self.dir))
        # 5. Namespaces, then the directory.
        for ns in reversed(st.netns):
            if (procs.NETNS_DIR / ns).exists():
                run(["ip", "netns", "del", ns], check=False)
        if self.dir.exists():
            try:
                shutil.rmtree(self.dir)
            except OSError:
                procs.umount_lazy(procs.mounts_under(self.dir))
                shutil.rmtree(self.dir, ignore_errors=True)
        left = [ns for ns in st.netns if (procs.NETNS_DIR / ns).exists()]
        if left or self.dir.exists():
            raise LabError(f"lab {self.name} not fully removed: namespaces {left}, dir {self.dir}")

    # -- the server -------------------------------------------------------------------------

    def start_server(self, timeout: float = 30, args: Sequence[str] = ()) -> str:
        """Run `shoal server` on the server host (detached); wait until it listens; its URL.
        `args`: more flags for it.

        A server already running is left as is."""
        if self.server_running() and self._state.server_url:
            return self._state.server_url
        self.server_data_dir.mkdir(parents=True, exist_ok=True)
        progress(f"starting shoal server on {SERVER_IP}:{SERVER_PORT}")
        argv = [
            *shoal_argv(),
            "server",
            "--listen",
            f"{SERVER_IP}:{SERVER_PORT}",
            "--data-dir",
            str(self.server_data_dir),
            *args,
        ]
        proc = self._start_in_netns(self.server_netns, argv, self.server_log)
        self._state.server_pid = proc.pid
        self._record_proc(proc.pid, "server", "shoal server")
        deadline = time.monotonic() + timeout
        while not listening(proc.pid, SERVER_PORT):
            if proc.poll() is not None:
                raise LabError(
                    f"shoal server exited with {proc.returncode}; log {self.server_log}:\n"
                    + _tail(self.server_log)
                )
            if time.monotonic() > deadline:
                raise LabError(
                    f"shoal server not listening after {timeout:g} s; log {self.server_log}:\n"
                    + _tail(self.server_log)
                )
            time.sleep(0.1)
        url = f"https://{SERVER_IP}:{SERVER_PORT}"
        self._state.server_url = url
        self._save()
        return url

    def stop_server(self, kill: bool = False) -> None:
        """Stop the server by its recorded PID: SIGTERM (SIGKILL after 10 s), or SIGKILL now."""
        pid = self._state.server_pid
        if pid is None:
            return
        start = next((p.start for p in self._state.procs if p.pid == pid), None)
        if kill:
            if procs.is_alive(pid, start):
                procs.kill([pid])
        else:
            procs.stop([(pid, start)], timeout=10)
        self._state.server_pid = None
        self._save()

    def upstream_dns_running(self) -> bool:
        pid = self._state.upstream_dns_pid
        start = next((p.start for p in self._state.procs if p.pid == pid), None)
        return pid is not None and procs.is_alive(pid, start)

    def _start_upstream_dns(self) -> None:
        """Run the lab's upstream resolver on the server host; wait until it listens."""
        progress(f"starting the lab's upstream DNS on {SERVER_IP}:{DNS_PORT}")
        argv = [
            sys.executable,
            "-m",
            "shoal.lab.upstream_dns",
            "--listen",
            f"{SERVER_IP}:{DNS_PORT}",
        ]
        proc = self._start_in_netns(self.server_netns, argv, self.upstream_dns_log)
        self._state.upstream_dns_pid = proc.pid
        self._record_proc(proc.pid, "upstream-dns", "shoal.lab.upstream_dns")
        deadline = time.monotonic() + 15 * self._patience
        # It prints its banner once bound (a port check could see the machine's own :53 while
        # nsenter has not switched namespaces yet).
        while "upstream-dns: zone" not in _tail(self.upstream_dns_log, 5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(
                    f"the lab's upstream DNS did not start; log {self.upstream_dns_log}:\n"
                    + _tail(self.upstream_dns_log)
                )
            time.sleep(0.05)

    def server_running(self) -> bool:
        pid = self._state.server_pid
        start = next((p.start for p in self._state.procs if p.pid == pid), None)
        return pid is not None and procs.is_alive(pid, start)

    def create_token(self, reusable: bool = True) -> str:
        """`shoal token create` against the lab server's data dir; the token (also recorded)."""
        argv = [*shoal_argv(), "token", "create", "--data-dir", str(self.server_data_dir)]
        if reusable:
            argv.append("--reusable")
        out = run(
            ["nsenter", f"--net={procs.NETNS_DIR / self.server_netns}", *argv],
            shown=["shoal", *argv[3:]],
        ).stdout
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        token = next((line for line in lines if line.startswith("SHOAL-")), out.strip())
        if reusable:
            self._state.token = token
            self._save()
        return token

    # -- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A JSON-able summary: hosts, addresses, docker hosts, server, token."""
        return {
            "name": self.name,
            "dir": str(self.dir),
            "persistent": self._state.persistent,
            "owner_pid": self._state.owner_pid,
            "server": {
                "netns": self.server_netns,
                "ip": str(SERVER_IP),
                "url": self._state.server_url,
                "pid": self._state.server_pid,
                "running": self.server_running(),
                "data_dir": str(self.server_data_dir),
                "log": str(self.server_log),
            },
            "upstream_dns": {
                "address": f"{SERVER_IP}:{DNS_PORT}",
                "pid": self._state.upstream_dns_pid,
                "running": self.upstream_dns_running(),
                "log": str(self.upstream_dns_log),
            },
            "token": self._state.token,
            "hosts": [
                {
                    "name": h.name,
                    "netns": h.netns,
                    "underlay_ip": str(h.underlay_ip),
                    "nat": h.nat,
                    "public_ip": str(h.public_ip),
                    "docker_host": h.docker_host,
                    "dockerd_running": h.dockerd_running(),
                    "state_dir": str(h.state_dir),
                    "wg_run_dir": str(h.wg_run_dir),
                }
                for h in self.hosts
            ],
        }

    # -- internals --------------------------------------------------------------------------

    def _save(self) -> None:
        self._state.save(self.dir)

    def _record_proc(self, pid: int, kind: str, what: str, host: str | None = None) -> None:
        self._state.procs.append(ProcRecord(pid, procs.start_time(pid), kind, what, host))
        self._save()

    def _new_netns(self, ns: str) -> None:
        self._state.netns.append(ns)  # intent first: destroy removes it even if we die here
        self._save()
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _make_underlay(self) -> None:
        ns = self.underlay_netns
        self._new_netns(ns)
        run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", ns, "link", "set", "br0", "up"])
        # The simulated wire must not run netfilter (br_netfilter is on in each new namespace).
        knobs = " ".join(
            f"/proc/sys/net/bridge/bridge-nf-call-{t}"
            for t in ("iptables", "ip6tables", "arptables")
        )
        run(
            [
                "nsenter",
                f"--net={procs.NETNS_DIR / ns}",
                "sh",
                "-c",
                f'for f in {knobs}; do [ ! -e "$f" ] || echo 0 > "$f"; done',
            ]
        )

    def _add_netns_host(self, ns: str, veth: str, ip: IPv4Address) -> None:
        self._new_netns(ns)
        ul = self.underlay_netns
        run(
            [
                "ip",
                "-n",
                ul,
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ]
        )
        run(["ip", "-n", ul, "link", "set", veth, "master", "br0", "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/{UNDERLAY_PREFIX}", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _add_hosts(
        self, count: int, nat: Mapping[str, natlab.NatSpec] | None = None, *, docker: bool = True
    ) -> list[LabHost]:
        nat = nat or {}
        first = max((h.index for h in self._state.hosts), default=0) + 1
        routers = natlab.router_index_of(nat, {f"h{i}": i for i in range(first, first + count)})
        if first + count - 1 > MAX_HOSTS:
            raise LabError(f"a lab holds at most {MAX_HOSTS} hosts")
        tar = busybox_tar(self.root)
        new: list[tuple[LabHost, subprocess.Popen[bytes]]] = []
        bare: list[LabHost] = []
        for index in range(first, first + count):
            spec = nat.get(f"h{index}")
            record = HostRecord(
                name=f"h{index}",
                index=index,
                netns=f"sl-{self.name}-h{index}",
                underlay_ip=str(HOST_IP_BASE + index),
                veth=f"v{index}",
            )
            if spec is not None:
                r = routers[spec.router]
                record.nat, record.router = spec.kind, spec.router
                record.public_ip = str(HOST_IP_BASE + r)
                record.underlay_ip = str(natlab.host_lan_address(r, index).ip)
            self._state.hosts.append(record)
            self._save()
            host = LabHost(self, record)
            host.dir.mkdir(parents=True, exist_ok=True)
            host.state_dir.mkdir(exist_ok=True)
            host.wg_run_dir.mkdir(exist_ok=True)
            host.resolv_conf.write_text(f"nameserver {SERVER_IP}\n")
            if spec is None:
                self._add_netns_host(record.netns, record.veth, host.underlay_ip)
            else:
                self._add_nat_host(record, spec, routers[spec.router])
            if docker:
                new.append((host, self._start_dockerd(host)))
            else:
                bare.append(host)
        # The dockerds start in parallel; each then gets the image.
        with ThreadPoolExecutor(max_workers=max(1, len(new))) as pool:
            list(pool.map(lambda hp: self._ready_host(hp[0], hp[1], tar), new))
        return [h for h, _ in new] + bare

    def router_netns(self, router: str) -> str:
        return f"sl-{self.name}-nat-{router}"

    def _add_nat_host(self, record: HostRecord, spec: natlab.NatSpec, r: int) -> None:
        """The host in router `spec.router`'s LAN (the router made on first use)."""
        router_ns = self.router_netns(spec.router)
        if router_ns not in self._state.netns:
            self._new_netns(router_ns)
            ul = self.underlay_netns
            run(["ip", "-n", ul, "link", "add", f"r{r}", "type", "veth", "peer", "name",
                 natlab.WAN, "netns", router_ns])  # fmt: skip
            run(["ip", "-n", ul, "link", "set", f"r{r}", "master", "br0", "up"])
            wan = natlab.wan_address(HOST_IP_BASE, r, UNDERLAY_PREFIX)
            natlab.build_router(run, str(procs.NETNS_DIR), router_ns, spec.kind, wan, r)
        self._new_netns(record.netns)
        run(["ip", "-n", router_ns, "link", "add", record.veth, "type", "veth", "peer", "name",
             "eth0", "netns", record.netns])  # fmt: skip
        run(["ip", "-n", router_ns, "link", "set", record.veth, "master", natlab.LAN, "up"])
        address = natlab.host_lan_address(r, record.index)
        run(["ip", "-n", record.netns, "addr", "add", str(address), "dev", "eth0"])
        run(["ip", "-n", record.netns, "link", "set", "eth0", "up"])
        gateway = natlab.router_lan_address(r).ip
        run(["ip", "-n", record.netns, "route", "add", "default", "via", str(gateway)])

    def _start_in_netns(self, ns: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                ["nsenter", f"--net={procs.NETNS_DIR / ns}", *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _start_dockerd(self, host: LabHost) -> subprocess.Popen[bytes]:
        progress(f"starting dockerd on {host.name} ({host.underlay_ip}) ...")
        docker = host.dir / "docker"
        argv = [
            "dockerd",
            "--config-file",
            str(self.dir / "daemon.json"),
            "--data-root",
            str(docker / "data"),
            "--exec-root",
            str(docker / "exec"),
            "--pidfile",
            str(host.dir / "dockerd.pid"),
            "-H",
            host.docker_host,
            "--bip",
            f"172.30.{host.index}.1/24",
            "--dns",
            str(host.underlay_ip),
        ]
        proc = self._start_in_netns(host.netns, argv, host.dockerd_log)
        self._record_proc(proc.pid, "dockerd", "dockerd", host=host.name)
        return proc

    def _ready_host(self, host: LabHost, dockerd: subprocess.Popen[bytes], tar: Path) -> None:
        timeout = 60 * self._patience
        deadline = time.monotonic() + timeout
        while True:
            if dockerd.poll() is not None:
                raise LabError(
                    f"dockerd on {host.name} exited with {dockerd.returncode}; "
                    f"log {host.dockerd_log}:\n{_tail(host.dockerd_log)}"
                )
            probe = host.docker("version", "--format", "{{.Server.Version}}", check=False)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise LabError(
                    f"dockerd on {host.name} did not answer within {timeout:g} s; "
                    f"log {host.dockerd_log}:\n{_tail(host.dockerd_log)}"
                )
            time.sleep(0.2)
        host.docker("import", str(tar), IMAGE, timeout=120)
        progress(f"{host.name} ready: dockerd {host.docker_host}, image {IMAGE}")


def _remove_containers(host: LabHost) -> None:
    ids = host.docker("ps", "-aq", check=False, timeout=30).stdout.split()
    if ids:
        host.docker("rm", "-f", *ids, check=False, timeout=120)


def _preflight(name: str, hosts: int) -> None:
    if not _NAME.match(name):
        raise LabError(f"bad lab name {name!r}: 1-20 of a-z, 0-9, '-' (starting alphanumeric)")
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, dockerd): run it as root")
    for tool, package in _TOOLS.items():
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: install {package}: run scripts/install-deps.sh")


def sweep(root: Path = DEFAULT_ROOT, *, include_persistent: bool = False) -> list[str]:
    """Destroy labs under `root` whose creating process is gone (aborted test runs).

    Labs made by `shoal lab up` are persistent and kept unless `include_persistent`.
    Returns the names removed."""
    removed: list[str] = []
    if not root.is_dir():
        return removed
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not (entry / STATE_FILE).exists():
            continue
        try:
            lab = Lab.load(entry.name, root)
        except LabError:
            continue
        st = lab._state
        if st.persistent:
            if not include_persistent:
                continue
        elif procs.is_alive(st.owner_pid, st.owner_start):
            continue
        lab.destroy()
        removed.append(lab.name)
    return removed
