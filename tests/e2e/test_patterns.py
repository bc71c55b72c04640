"""The README's patterns deployed on the lab with the commands their READMEs give, on real
software (Redis, PostgreSQL and an app built from Debian's packages, Debian's docker-compose):
the api reads and writes its cache on another host by name; a database published on its
host's mesh address only is used from another host and is closed to the underlay; the catalog
that tools read, and its watch mode."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.lab import IMAGE, Lab, LabHost
from tests.e2e.runbook import shoal, up, wait_until

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Prints "open" or "closed: <reason>" for a TCP connect to argv[1]:argv[2].
_TCP_PROBE = textwrap.dedent(
    """
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
        print("open")
    except OSError as exc:
        print("closed:", exc)
    """
)


@pytest.fixture(scope="module")
def hosts(lab: Lab, join_token: str) -> tuple[LabHost, LabHost, LabHost]:
    h1, h2, h3 = lab.hosts[:3]
    for host in (h1, h2, h3):
        up(lab, host, join_token)  # "already running" when another module joined it
    lab.load_images()
    return h1, h2, h3


def readme(host: LabHost, example: str, command: str) -> str:
    """Run a command as an example's README gives it, from the example's directory."""
    script = f"cd {EXAMPLES / example} && {command}"
    return host.exec(["sh", "-c", script], timeout=180).stdout


@pytest.fixture
def compose_down(hosts: tuple[LabHost, ...]) -> Iterator[list[tuple[LabHost, str, str]]]:
    """(host, example, compose command) to take down after the test, whatever happened."""
    deployed: list[tuple[LabHost, str, str]] = []
    yield deployed
    for host, example, compose in deployed:
        readme(host, example, f"{compose} down -v --timeout 1")


def http_json(host: LabHost, url: str) -> dict[str, Any] | None:
    """GET `url` from the host itself; the JSON body on a 200, else None."""
    out = host.exec(["curl", "-sf", "--max-time", "10", url], check=False, timeout=30)
    if out.returncode != 0:
        return None
    body: dict[str, Any] = json.loads(out.stdout)
    return body


def tcp(host: LabHost, ip: str, port: int) -> str:
    return host.exec(
        ["python3", "-c", _TCP_PROBE, ip, str(port)], check=False, timeout=30
    ).stdout.strip()


def test_api_reaches_its_cache_on_another_host_by_name(
    hosts: tuple[LabHost, ...], compose_down: list[tuple[LabHost, str, str]]
) -> None:
    h1, h2, _ = hosts
    compose_down += [(h, "api-cache", "docker-compose -p shop") for h in (h1, h2)]
    readme(h2, "api-cache", "docker-compose -p shop up -d cache")
    readme(h1, "api-cache", "docker-compose -p shop up -d api")
    visits: list[dict[str, Any]] = []
    wait_until(
        "api on h1 answers /visit from its cache on h2",
        lambda: (
            (body := http_json(h1, "http://127.0.0.1:8000/visit")) is not None
            and not visits.append(body)
        ),
        60,
    )
    second = http_json(h1, "http://127.0.0.1:8000/visit")
    assert second is not None and second["visits"] == visits[0]["visits"] + 1
    assert second["redis"] == "cache:6379"
    # Written where the cache runs, on the other host.
    stored = h2.docker("exec", "shop_cache_1", "redis-cli", "get", "visits").stdout.strip()
    assert stored == str(second["visits"])
    catalog = json.loads(shoal(h1, "services", "--json", "--state-dir", str(h1.state_dir)).stdout)
    cache = next(s for s in catalog if s["name"] == "cache.shop")
    assert [(i["node"], i["ports"]) for i in cache["instances"]] == [
        ("h2", [{"port": 6379, "protocol": "tcp"}])
    ]
    assert cache["dns"] == "cache.shop.shoal"


def test_database_is_reachable_over_the_mesh_only(
    hosts: tuple[LabHost, ...], compose_down: list[tuple[LabHost, str, str]]
) -> None:
    h1, h2, _ = hosts
    env = json.loads(shoal(h2, "env", "--json", "--state-dir", str(h2.state_dir)).stdout)
    mesh_ip = env["SHOAL_MESH_IP"]
    assert env["SHOAL_NODE"] == "h2"
    db_compose = f"env $(shoal env --state-dir {h2.state_dir}) docker-compose -f db.yaml"
    compose_down += [(h1, "database-host", "docker-compose -f app.yaml")]
    compose_down += [(h2, "database-host", db_compose)]
    readme(h2, "database-host", f"{db_compose} up -d")
    readme(h1, "database-host", "DB_HOST=h2 docker-compose -f app.yaml up -d")
    answers: list[dict[str, Any]] = []
    wait_until(
        "the app on h1 queries postgres://h2.shoal/app",
        lambda: (
            (body := http_json(h1, "http://127.0.0.1:8001/db")) is not None
            and not answers.append(body)
        ),
        90,
    )
    assert answers[0]["database"] == "app" and answers[0]["rows"] >= 1
    # Published on the mesh address and nowhere else.
    db = h2.docker("ps", "-q", "--filter", "label=com.docker.compose.service=db").stdout.strip()
    assert h2.docker("port", db).stdout.split() == ["5432/tcp", "->", f"{mesh_ip}:5432"]
    assert tcp(h1, mesh_ip, 5432) == "open"
    assert tcp(h1, str(h2.underlay_ip), 5432).startswith("closed")
    assert tcp(h2, str(h2.underlay_ip), 5432).startswith("closed")


def test_the_catalog_socket_serves_tools_and_watch_streams_changes(
    hosts: tuple[LabHost, ...],
) -> None:
    h1, _, h3 = hosts
    socket = h3.state_dir / "catalog.sock"
    assert socket.stat().st_mode & 0o777 == 0o666
    out = h3.exec(["curl", "-sf", "--unix-socket", str(socket), "http://agent/v1/catalog"])
    index = json.loads(out.stdout)["index"]
    log = h3.dir / "services-watch.log"
    log.unlink(missing_ok=True)
    watch = h3.popen(
        ["shoal", "services", "--watch", "--json", "--state-dir", str(h3.state_dir)], log=log
    )
    try:
        wait_until("the first catalog", lambda: log.exists() and log.read_text().count("\n") >= 1)
        h1.run_container("watched", network="shoal", image=IMAGE, options=("--expose", "7000"))

        def seen() -> bool:
            for line in log.read_text().splitlines():
                catalog = json.loads(line)
                if any(s["name"] == "watched" for s in catalog["services"]):
                    assert catalog["index"] > index
                    return True
            return False

        wait_until("the watch prints the new container", seen, 15)
        one = h3.exec(
            ["curl", "-sf", "--unix-socket", str(socket), "http://agent/v1/catalog/watched"]
        )
        (entry,) = json.loads(one.stdout)
        (instance,) = entry["instances"]
        assert instance["node"] == "h1" and instance["dns"] == "watched.h1.shoal"
        assert instance["ports"] == [{"port": 7000, "protocol": "tcp"}]
        assert (
            instance["node_ip"]
            == json.loads(shoal(h1, "env", "--json", "--state-dir", str(h1.state_dir)).stdout)[
                "SHOAL_MESH_IP"
            ]
        )
        missing = h3.exec(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket",
             str(socket), "http://agent/v1/catalog/nothing-here"],
        )  # fmt: skip
        assert missing.stdout == "404"
    finally:
        os.killpg(watch.pid, signal.SIGTERM)
        watch.wait(10)
        h1.docker("rm", "-f", "watched", check=False)


def rc_containers(host: LabHost) -> list[str]:
    out = host.docker("ps", "-q", "--filter", "label=com.docker.compose.project=rc").stdout
    return sorted(out.split())


def cluster(host: LabHost, *args: str, node: str | None = None) -> str:
    """redis-cli in `node`, by default the host's first cluster node ('' when it does not
    answer)."""
    container = node or rc_containers(host)[0]
    out = host.docker("exec", container, "redis-cli", "-c", *args, check=False)
    return out.stdout if out.returncode == 0 else ""


def test_a_redis_cluster_across_hosts_survives_the_loss_of_a_host(
    hosts: tuple[LabHost, ...], compose_down: list[tuple[LabHost, str, str]]
) -> None:
    h1, h2, h3 = hosts
    compose_down += [(h, "redis-cluster", "docker-compose -p rc") for h in hosts]
    for host in hosts:
        readme(host, "redis-cluster", "docker-compose -p rc up -d --scale node=2")

    def catalogued() -> int:
        out = shoal(h1, "services", "--json", "--state-dir", str(h1.state_dir)).stdout
        return sum(len(s["instances"]) for s in json.loads(out) if s["name"] == "node.rc")

    wait_until("6 cluster nodes in h1's catalog", lambda: catalogued() == 6, 30)
    readme(h1, "redis-cluster", f"SHOAL_STATE_DIR={h1.state_dir} ./create-cluster.sh")
    # Each node turns its state ok on its own, by gossip: a write redirected (-c) to a master
    # that has not yet answers CLUSTERDOWN, so every node of the six is waited for.
    for host in hosts:
        for node in rc_containers(host):
            wait_until(
                f"cluster_state:ok on {host.name}'s {node[:12]}",
                lambda host=host, node=node: (
                    "cluster_state:ok" in cluster(host, "cluster", "info", node=node)
                ),
                60,
            )

    # Every replica sits on another host than its master (the address a node announces is
    # its container IP, routed across the mesh: host = the subnet's third octet here).
    def node_rows() -> list[list[str]]:
        return [line.split() for line in cluster(h1, "cluster", "nodes").splitlines()]

    # Gossip tells every node of every replica a moment after the slots are covered.
    wait_until(
        "h1 knows all 3 replicas", lambda: sum("slave" in r[2] for r in node_rows()) == 3, 30
    )
    rows = node_rows()
    ip_of = {r[0]: r[1].split(":")[0] for r in rows}
    replicas = [r for r in rows if "slave" in r[2]]
    for r in replicas:
        assert ip_of[r[3]].rsplit(".", 1)[0] != ip_of[r[0]].rsplit(".", 1)[0], r
    for i in range(20):
        assert cluster(h1, "set", f"key{i}", f"v{i}").strip() == "OK"
    # A replica fails over only once it has synced (replica validity): the operator waits.
    for ip in (ip_of[r[0]] for r in replicas):
        wait_until(
            f"replica {ip} in sync",
            lambda ip=ip: "master_link_status:up" in cluster(h1, "-h", ip, "info", "replication"),
            60,
        )
    assert cluster(h2, "get", "key7").strip() == "v7"

    h3.docker("kill", *rc_containers(h3))  # the host is lost, abruptly

    def recovered(host: LabHost) -> bool:
        """h3's two nodes marked failed, three masters serving slots again, state ok."""
        rows = [line.split() for line in cluster(host, "cluster", "nodes").splitlines()]
        failed = [r for r in rows if "fail" in r[2].split(",")]
        serving = [r for r in rows if "master" in r[2] and "fail" not in r[2] and len(r) > 8]
        ok = "cluster_state:ok" in cluster(host, "cluster", "info")
        return len(failed) == 2 and len(serving) == 3 and ok

    for host in (h1, h2):
        wait_until(
            f"{host.name} sees h3's master replaced by its replica", lambda h=host: recovered(h), 60
        )
    assert [cluster(h2, "get", f"key{i}").strip() for i in range(20)] == [
        f"v{i}" for i in range(20)
    ]
