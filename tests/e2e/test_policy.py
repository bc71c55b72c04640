"""The access-control policy as an operator uses it, in a 3-host lab: every flow of a matrix
(several services x ports x hosts) does what `shoal policy test` says, a policy change takes
effect within a second (a newly allowed flow's first packet passes, an established flow it
denies dies), and a `mesh-host` rule opens a host's own service.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from shoal.lab import IMAGE, Lab, LabHost
from shoal.lab.lab import listening
from tests.e2e.runbook import admin, status, up, wait_until

pytestmark = pytest.mark.e2e

PORTS = (5432, 6379, 8080)
HOST_PORT = 9191  # a host service of h2 on 0.0.0.0
ECHO_PORT = 7000

# (container, host index, compose service, shoal.* labels)
CONTAINERS = (
    ("pol-web1", 0, "web", ("shoal.tier=front",)),
    ("pol-db", 1, "db", ()),
    ("pol-cache", 2, "cache", ()),
    ("pol-web3", 2, "web", ()),
)

POLICY_V1 = """\
# web reaches db on 5432; front-tier containers reach the cache; h1 reaches h2's own 9191.
rules:
  - from: service:web
    to: service:db
    ports: 5432
  - from: label:shoal.tier=front
    to: service:cache
    ports: [6379, 7000]
  - from: node:h1
    to: mesh-host:h2
    ports: 9191
tests:
  - {from: service:web, to: service:db, port: 5432, expect: allow}
  - {from: service:web, to: service:db, port: 8080, expect: deny}
  - {from: [service:web, label:shoal.tier=front], to: service:cache, port: 6379, expect: allow}
  - {from: service:web, to: service:cache, port: 6379, expect: deny}
  - {from: node:h1, to: mesh-host:h2, port: 9191, expect: allow}
"""
# v2: the cache is closed (its established echo flow must die), db opens 8080 too.
POLICY_V2 = (
    POLICY_V1.replace("ports: 5432\n", "ports: [5432, 8080]\n", 1)
    .replace("ports: [6379, 7000]", "ports: [6379]")
    .replace("port: 8080, expect: deny", "port: 8080, expect: allow")
)

# Serves every port of argv[1:] from inside a container's network namespace: accepts and
# echoes whatever arrives (the connection stays open).
_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    def echo(conn):
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)
    def serve(port):
        s = socket.create_server(("0.0.0.0", port))
        while True:
            threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
    for port in sys.argv[2:]:
        threading.Thread(target=serve, args=(int(port),), daemon=True).start()
    serve(int(sys.argv[1]))
    """
)
# Connects to argv[1]:argv[2] within argv[3] s: prints "open" or "closed".
_CONNECT = textwrap.dedent(
    """
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
        print("open")
    except OSError:
        print("closed")
    """
)
# Retries a connect to argv[1]:argv[2] every 20 ms (each try waits 0.2 s); prints the wall
# time of the first that opens.
_FIRST_OPEN = textwrap.dedent(
    """
    import socket, sys, time
    while True:
        try:
            socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.2).close()
            print(time.time(), flush=True)
            break
        except OSError:
            time.sleep(0.02)
    """
)
# Keeps one connection to argv[1]:argv[2] echoing a byte every 20 ms; prints "up" once it
# works, then the wall time of the first byte that got no echo within 0.5 s.
_ECHO = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
    s.settimeout(0.5)
    print("up", flush=True)
    while True:
        sent = time.time()
        try:
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise OSError("closed")
        except OSError:
            print(sent, flush=True)
            break
        time.sleep(0.02)
    """
)


def in_container(host: LabHost, name: str, script: str, *args: str) -> list[str]:
    """Python of the test's interpreter inside a container's network namespace."""
    pid = host.container_pid(name)
    return ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", script, *args]


def set_policy(lab: Lab, text: str, path: Path) -> float:
    """`shoal policy set`; the wall time the server accepted it (its `set_at`: the CLI's own
    start and exit take longer than what is measured here)."""
    path.write_text(text)
    admin(lab, "policy", "set", str(path))
    info = json.loads(admin(lab, "policy", "get", "--json").stdout)
    return datetime.fromisoformat(info["set_at"]).timestamp()


def enforced(host: LabHost, revision: int | None) -> bool:
    return status(host).get("policy_revision") == revision


@pytest.fixture(scope="module")
def hosts(lab: Lab, join_token: str) -> Iterator[tuple[LabHost, LabHost, LabHost]]:
    """h1..h3 in the mesh with CONTAINERS (each serving PORTS and ECHO_PORT) and a server on
    0.0.0.0:HOST_PORT of h2; afterwards the policy is cleared, so later tests of the session
    see the mesh as before."""
    hs = lab.hosts[:3]
    servers: list[subprocess.Popen[bytes]] = []
    for host in hs:
        up(lab, host, join_token)  # "already running" when another module joined it
    try:
        for name, index, service, labels in CONTAINERS:
            host = hs[index]
            options = ["--label", "com.docker.compose.project=pol"]
            options += ["--label", f"com.docker.compose.service={service}"]
            for label in labels:
                options += ["--label", label]
            host.run_container(name, image=IMAGE, options=options)
            server = subprocess.Popen(
                in_container(host, name, _SERVER, *(str(p) for p in (*PORTS, ECHO_PORT))),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            servers.append(server)
            wait_until(f"{name}'s servers", lambda s=server: listening(s.pid, ECHO_PORT))
        host_server = hs[1].popen(
            [sys.executable, "-m", "http.server", str(HOST_PORT), "--bind", "0.0.0.0"],
            log=hs[1].dir / "policy-http.log",
        )
        servers.append(host_server)
        wait_until("h2's host service", lambda: listening(host_server.pid, HOST_PORT))
        # Every host knows every container (the policy compiles from the same netmap).
        for name, _i, _s, _l in CONTAINERS:
            wait_until(
                f"{name} in the catalog",
                lambda n=name: n in admin(lab, "services", "--json").stdout,
            )
        yield hs[0], hs[1], hs[2]
    finally:
        admin(lab, "policy", "clear")
        for server in servers:
            server.kill()
            server.wait(timeout=10)
        for name, index, _s, _l in CONTAINERS:
            hs[index].docker("rm", "-f", name, check=False)


def verdict(lab: Lab, src: str, dst: str, port: int) -> bool:
    """What `shoal policy test` says, as allow (True) or deny; its exit code agrees."""
    done = admin(lab, "policy", "test", "--from", src, "--to", f"{dst}:{port}", check=False)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    allowed = lines[0].startswith("allow")
    assert done.returncode == (0 if allowed else 1), done.stderr
    return allowed


def tcp_opens(host: LabHost, src: str, dst_ip: IPv4Address, port: int) -> bool:
    argv = in_container(host, src, _CONNECT, str(dst_ip), str(port), "2")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    return out.strip() == "open"


def test_every_flow_of_the_matrix_does_what_the_policy_says(
    lab: Lab, hosts: tuple[LabHost, LabHost, LabHost], tmp_path: Path
) -> None:
    hs = hosts
    set_policy(lab, POLICY_V1, tmp_path / "policy.yaml")
    rev = json.loads(admin(lab, "policy", "get", "--json").stdout)["revision"]
    wait_until("every host to enforce the policy", lambda: all(enforced(h, rev) for h in hs))
    ips = {name: hs[i].container_ip(name) for name, i, _s, _l in CONTAINERS}
    flows = [
        (src, si, dst, port)
        for src, si, _s, _l in CONTAINERS
        for dst, di, _s2, _l2 in CONTAINERS
        for port in PORTS
        if si != di  # enforcement is at the destination, on traffic from the mesh
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        verdicts = pool.map(lambda f: verdict(lab, f[0], f[2], f[3]), flows)
        expected = {(s, d, p): v for (s, _si, d, p), v in zip(flows, verdicts, strict=True)}
        got = dict(
            zip(
                expected,
                pool.map(lambda f: tcp_opens(hs[f[1]], f[0], ips[f[2]], f[3]), flows),
                strict=True,
            )
        )
    wrong = {flow: (expected[flow], got[flow]) for flow in expected if expected[flow] != got[flow]}
    assert not wrong, f"(expected, got) for flows that disobey the policy: {wrong}"
    # Not a vacuous matrix: both verdicts occur, as written.
    assert expected[("pol-web1", "pol-db", 5432)] and expected[("pol-web3", "pol-db", 5432)]
    assert expected[("pol-web1", "pol-cache", 6379)]
    assert not expected[("pol-web3", "pol-db", 8080)] and not expected[("pol-db", "pol-web1", 8080)]
    assert sum(expected.values()) == 3 and len(expected) - sum(expected.values()) >= 20


def test_a_mesh_host_rule_opens_a_host_service_to_whom_it_names(
    lab: Lab, hosts: tuple[LabHost, LabHost, LabHost], tmp_path: Path
) -> None:
    h1, h2, h3 = hosts
    set_policy(lab, POLICY_V1, tmp_path / "policy.yaml")
    mesh2 = IPv4Address(status(h2)["mesh_ip"])
    run = [sys.executable, "-c", _CONNECT, str(mesh2), str(HOST_PORT), "2"]
    # node:h1 covers h1 itself and its containers; h3 and its containers stay out.
    wait_until(
        "h1 to reach h2's service", lambda: h1.exec(run, check=False).stdout.strip() == "open"
    )
    assert tcp_opens(h1, "pol-web1", mesh2, HOST_PORT)
    assert h3.exec(run, check=False).stdout.strip() == "closed"
    assert not tcp_opens(h3, "pol-cache", mesh2, HOST_PORT)
    assert not tcp_opens(h1, "pol-web1", mesh2, 22)  # only the port the rule names
    # h2 names the service the rule opened to the mesh in its health warnings.
    warnings = {w["code"]: w["message"] for w in status(h2)["health"]}
    assert f"tcp 0.0.0.0:{HOST_PORT} (opened by policy.yaml:" in warnings.get(
        "mesh-reachable-listener", ""
    ), warnings


def test_clearing_the_policy_brings_back_the_defaults_everywhere(
    lab: Lab, hosts: tuple[LabHost, LabHost, LabHost], tmp_path: Path
) -> None:
    h1, h2, h3 = hosts
    set_policy(lab, POLICY_V1, tmp_path / "policy.yaml")
    rev = json.loads(admin(lab, "policy", "get", "--json").stdout)["revision"]
    wait_until("every host to enforce the policy", lambda: all(enforced(h, rev) for h in hosts))
    db, mesh2 = h2.container_ip("pol-db"), IPv4Address(status(h2)["mesh_ip"])
    reach_host = [sys.executable, "-c", _CONNECT, str(mesh2), str(HOST_PORT), "2"]
    wait_until("h1 to reach h2's service", lambda: h1.exec(reach_host).stdout.strip() == "open")
    assert not tcp_opens(h3, "pol-web3", db, 8080)
    out = admin(lab, "policy", "clear").stdout
    assert out.strip() == f"policy r{rev + 1}: removed; shoal's defaults apply"
    wait_until("every host back to the defaults", lambda: all(enforced(h, None) for h in hosts))
    # The defaults: containers reach containers, hosts' own services are closed again.
    assert tcp_opens(h3, "pol-web3", db, 8080)
    assert h1.exec(reach_host).stdout.strip() == "closed"
    warnings = {w["code"] for w in status(h2)["health"]}
    assert "mesh-reachable-listener" not in warnings
    assert admin(lab, "policy", "clear").stdout.strip() == (
        "no policy was set; shoal's defaults apply"
    )


def test_a_policy_change_takes_effect_within_a_second(
    lab: Lab, hosts: tuple[LabHost, LabHost, LabHost], tmp_path: Path
) -> None:
    h1, h2, h3 = hosts
    path = tmp_path / "policy.yaml"
    set_policy(lab, POLICY_V1, path)
    db, cache = h2.container_ip("pol-db"), h3.container_ip("pol-cache")
    wait_until("v1 in force", lambda: not tcp_opens(h1, "pol-web1", db, 8080))
    # An established flow v2 denies (web1 -> cache:7000) and a flow only v2 allows.
    echo = subprocess.Popen(
        in_container(h1, "pol-web1", _ECHO, str(cache), str(ECHO_PORT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    first = subprocess.Popen(
        in_container(h1, "pol-web1", _FIRST_OPEN, str(db), "8080"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert echo.stdout is not None and echo.stdout.readline().strip() == "up"
        time.sleep(0.3)  # the echo flow carries traffic for a while before the change
        assert echo.poll() is None, "the echo flow died before the change"
        changed = set_policy(lab, POLICY_V2, path)
        opened, _ = first.communicate(timeout=30)
        died, _ = echo.communicate(timeout=30)
    finally:
        for proc in (echo, first):
            proc.kill()
            proc.wait(timeout=10)
    opened_after, died_after = float(opened) - changed, float(died) - changed
    print(f"new flow opened {opened_after:.3f} s, established flow died {died_after:.3f} s after")
    assert opened_after < 1.0, f"a newly allowed flow took {opened_after:.2f} s"
    assert died_after < 1.0, f"a now denied flow lived on for {died_after:.2f} s"
    # (the byte that got no echo may have left one round, 20 ms, before the change)
    assert died_after > -0.1, f"the echo flow died {-died_after:.2f} s before the change"
    assert not tcp_opens(h1, "pol-web1", cache, ECHO_PORT)  # and stays closed
    assert tcp_opens(h1, "pol-web1", cache, 6379)
