"""Several `shoal server` replicas in the lab, on one PostgreSQL of the lab's own.

The database is a cluster of Debian's PostgreSQL binaries made by `initdb` under the lab's
dir, run as the `postgres` user in the server host's namespace, listening on that namespace's
loopback and on a socket dir of its own: nothing outside the lab reaches it and it never
touches the machine's own cluster. Only the lab's processes can connect, so it trusts them
(no password) and skips fsync (a lab's database dies with the lab).

Replica i listens on 192.0.2.(1 + i):8443 in the server host's namespace (replica 1 on the
server's usual address), with a data dir of its own: the first replica's, copied (its CA,
node-auth key and admin token; see README "Running several servers"). Every process is
recorded in the lab state, so `Lab.destroy` removes them with the rest.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from shoal.lab import procs
from shoal.lab.errors import LabError
from shoal.lab.lab import SERVER_IP, SERVER_PORT, Lab, _tail, progress, run, shoal_argv

PG_ROOT = Path("/usr/lib/postgresql")
PG_PORT = 5432  # on the server namespace's loopback: the machine's own cluster is elsewhere
PG_USER = "shoal"  # the cluster's superuser, named at initdb
MAX_REPLICAS = 8
# Files of a server's data dir that belong to that one process, never copied to a replica.
_OWN_FILES = {"server.json", "shoal.db", "shoal.db-wal", "shoal.db-shm"}


@dataclass(frozen=True, slots=True)
class Replica:
    """One `shoal server` replica of the lab (see the module docstring)."""

    index: int
    ip: IPv4Address
    url: str
    data_dir: Path
    log: Path
    pid: int


def postgres_url(port: int = PG_PORT) -> str:
    """The URL of a cluster `postgres_argv` runs on 127.0.0.1 (the lab's: in the server
    host's namespace)."""
    return f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"


def _pg_bin(tool: str) -> Path:
    versions = sorted((p for p in PG_ROOT.glob("*") if p.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        raise LabError(f"PostgreSQL not found in {PG_ROOT}: run scripts/install-deps.sh")
    return versions[-1] / "bin" / tool


def _as_postgres(argv: list[str]) -> list[str]:
    # setpriv execs: the recorded PID is the postmaster itself, not a wrapper.
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]


def make_cluster(base: Path) -> None:
    """A new PostgreSQL cluster in `base`/data owned by `postgres`, trusting local clients
    (`postgres_argv` runs it); nothing if it exists."""
    data, sockets = base / "data", base / "run"
    if data.exists():
        return
    for d in (base, data, sockets):
        d.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(d, "postgres", "postgres")
    run(
        _as_postgres(
            [str(_pg_bin("initdb")), "-D", str(data), "-U", PG_USER, "--auth=trust",
             "--no-sync", "--no-instructions", "-E", "UTF8"]
        ),
        timeout=120,
        shown=["initdb", str(data)],
    )  # fmt: skip


def postgres_argv(base: Path, host: str, port: int) -> list[str]:
    """The command that runs `make_cluster(base)`'s cluster as `postgres`, listening on
    host:port and on a socket in `base`/run; no fsync (a throwaway database)."""
    return _as_postgres(
        [str(_pg_bin("postgres")), "-D", str(base / "data"), "-k", str(base / "run"),
         "-h", host, "-p", str(port), "-c", "fsync=off", "-c", "full_page_writes=off",
         "-c", "max_connections=200"]
    )  # fmt: skip


def postgres_log(base: Path) -> Path:
    """The log file for `postgres_argv`'s output, writable by `postgres`."""
    log = base / "postgres.log"
    log.touch()
    shutil.chown(log, "postgres", "postgres")
    return log


def start_postgres(lab: Lab, timeout: float = 60) -> str:
    """Make and start the lab's PostgreSQL (once); its URL for `start_replica`."""
    base = lab.dir / "postgres"
    if not (base / "data").exists():
        progress("making the lab's PostgreSQL cluster (initdb)")
        make_cluster(base)
    progress(f"starting the lab's PostgreSQL on 127.0.0.1:{PG_PORT} in {lab.server_netns}")
    log = postgres_log(base)
    proc = lab._start_in_netns(lab.server_netns, postgres_argv(base, "127.0.0.1", PG_PORT), log)
    lab._record_proc(proc.pid, "postgres", "postgres (lab database)")
    deadline = time.monotonic() + timeout
    while "ready to accept connections" not in _tail(log, 10):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the lab's PostgreSQL did not start; log {log}:\n{_tail(log)}")
        time.sleep(0.1)
    return postgres_url()


def stop_postgres(lab: Lab, timeout: float = 30) -> None:
    """Stop the lab's PostgreSQL (fast shutdown: its sessions end now), as a restart or a
    failover of the database does to the replicas; `start_postgres` starts it again."""
    for record in lab._state.procs:
        if record.kind == "postgres" and procs.is_alive(record.pid, record.start):
            os.kill(record.pid, signal.SIGINT)
            deadline = time.monotonic() + timeout
            while procs.is_alive(record.pid, record.start):
                if time.monotonic() > deadline:
                    raise LabError(f"the lab's PostgreSQL (pid {record.pid}) did not stop")
                time.sleep(0.05)


def replica_ip(index: int) -> IPv4Address:
    if not 1 <= index <= MAX_REPLICAS:
        raise LabError(f"replica index {index}: expected 1 to {MAX_REPLICAS}")
    return SERVER_IP + (index - 1)


def replica_data_dir(lab: Lab, index: int) -> Path:
    return lab.dir / f"server-r{index}"


def start_replica(lab: Lab, index: int, store_url: str, timeout: float = 60) -> Replica:
    """Run replica `index` (detached) on the lab database; wait until it listens.

    Its data dir is replica 1's, copied on its first start (replica 1 must have started
    once before any other); a replica started again keeps its own."""
    ip = replica_ip(index)
    data_dir = replica_data_dir(lab, index)
    if index > 1 and not data_dir.exists():
        first = replica_data_dir(lab, 1)
        if not (first / "ca.pem").exists():
            raise LabError("start replica 1 first: the others copy its CA and keys")
        data_dir.mkdir(mode=0o700)
        for entry in first.iterdir():
            if entry.is_file() and entry.name not in _OWN_FILES:
                shutil.copy2(entry, data_dir / entry.name)
    if index > 1:
        run(["ip", "-n", lab.server_netns, "addr", "replace", f"{ip}/24", "dev", "eth0"])
    data_dir.mkdir(mode=0o700, exist_ok=True)
    log = lab.dir / f"server-r{index}.log"
    progress(f"starting shoal server replica {index} on {ip}:{SERVER_PORT}")
    argv = [*shoal_argv(), "server", "--listen", f"{ip}:{SERVER_PORT}", "--data-dir",
            str(data_dir), "--store", store_url]  # fmt: skip
    proc = lab._start_in_netns(lab.server_netns, argv, log)
    lab._record_proc(proc.pid, "server", f"shoal server replica {index}")
    deadline = time.monotonic() + timeout
    while not _listening_on(proc.pid, ip, SERVER_PORT):
        if proc.poll() is not None:
            raise LabError(
                f"replica {index} exited with {proc.returncode}; log {log}:\n{_tail(log)}"
            )
        if time.monotonic() > deadline:
            raise LabError(f"replica {index} not listening after {timeout:g} s; log {log}")
        time.sleep(0.1)
    return Replica(index, ip, f"https://{ip}:{SERVER_PORT}", data_dir, log, proc.pid)


def kill_replica(replica: Replica) -> None:
    """SIGKILL: what the replica's machine dying looks like to everyone else (its sockets
    close at once; nothing is flushed or said goodbye to)."""
    procs.kill([replica.pid])
    if procs.is_alive(replica.pid):
        raise LabError(f"replica {replica.index} (pid {replica.pid}) survived SIGKILL")


def admin(lab: Lab, replica: Replica, *args: str) -> subprocess.CompletedProcess[str]:
    """`shoal ARGS --data-dir <replica's>` on the server host: an admin command through
    that replica."""
    argv = [*shoal_argv(), *args, "--data-dir", str(replica.data_dir)]
    return run(
        ["nsenter", f"--net={procs.NETNS_DIR / lab.server_netns}", *argv],
        shown=["shoal", *args, f"(replica {replica.index})"],
    )


def _listening_on(pid: int, ip: IPv4Address, port: int) -> bool:
    """True if a TCP socket listens on ip:port in the network namespace of `pid`."""
    # /proc/net/tcp writes the address as the 32-bit value in host (little-endian) order.
    want = f"{socket.ntohl(int(ip)):08X}:{port:04X}"
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)
