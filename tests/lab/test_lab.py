"""The lab itself, for real: namespaces, underlay, a dockerd per host, private wireguard dirs,
growing a running lab, and a destroy (or sweep after an abort) that leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.lab import DEFAULT_ROOT, IMAGE, Lab, LabCommandFailed, sweep
from shoal.lab import lab as lab_module
from shoal.lab.procs import NETNS_DIR, is_alive, mounts_under

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    sweep()
    lab = Lab.create(f"t{os.getpid()}", hosts=2)
    try:
        yield lab
    finally:
        lab.destroy()


def test_hosts_reach_each_other_over_the_underlay(lab: Lab) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    assert (str(h1.underlay_ip), str(h2.underlay_ip)) == ("192.0.2.11", "192.0.2.12")
    lab.host("h1").exec(["busybox", "ping", "-c", "1", "-W", "2", str(h2.underlay_ip)])
    h2.exec(["busybox", "ping", "-c", "1", "-W", "2", str(h1.underlay_ip)])


def test_hosts_have_no_route_out_of_the_lab(lab: Lab) -> None:
    routes = lab.host("h1").exec(["ip", "route", "show", "default"]).stdout
    assert routes.strip() == ""


def test_a_container_on_the_default_bridge_reaches_its_host(lab: Lab) -> None:
    for host in lab.hosts:
        name = f"c-{host.name}"
        host.run_container(name, network="bridge")
        ip = host.container_ip(name, network="bridge")
        assert str(ip).startswith(f"172.30.{host.index}.")
        assert host.container_pid(name) > 0
        host.container_exec(name, ["ping", "-c", "1", "-W", "2", str(host.underlay_ip)])
        # Container DNS goes to the host's own underlay address, never out of the lab.
        resolv = host.container_exec(name, ["cat", "/etc/resolv.conf"]).stdout
        assert f"nameserver {host.underlay_ip}" in resolv


def test_exec_runs_on_the_host_with_its_own_wireguard_dir(lab: Lab) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    h1.exec(["sh", "-c", "touch /var/run/wireguard/h1.sock"])
    assert h1.exec(["ls", "/var/run/wireguard"]).stdout.split() == ["h1.sock"]
    assert h2.exec(["ls", "/var/run/wireguard"]).stdout.split() == []
    assert (h1.wg_run_dir / "h1.sock").exists()
    assert not Path("/var/run/wireguard/h1.sock").exists()
    addrs = h2.exec(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
    assert "192.0.2.12/24" in addrs
    # `docker` on a host talks to that host's dockerd.
    assert "c-h2" in h2.exec(["docker", "ps", "--format", "{{.Names}}"]).stdout.split()
    assert h2.exec(["sh", "-c", "exit 3"], check=False).returncode == 3
    with pytest.raises(LabCommandFailed) as failed:
        h2.exec(["sh", "-c", "echo nope >&2; exit 4"])
    assert failed.value.returncode == 4 and "nope" in str(failed.value)


def test_add_host_grows_the_running_lab(lab: Lab) -> None:
    h3 = lab.add_host()
    assert (h3.name, str(h3.underlay_ip)) == ("h3", "192.0.2.13")
    assert [h.name for h in Lab.load(lab.name).hosts] == ["h1", "h2", "h3"]
    h3.exec(["busybox", "ping", "-c", "1", "-W", "2", "192.0.2.11"])
    assert IMAGE in h3.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout


def _leftovers(name: str, netns_inodes: set[int], pids: list[int]) -> list[str]:
    """Everything of lab `name` still on the machine."""
    left = [f"netns {ns}" for ns in os.listdir(NETNS_DIR) if ns.startswith(f"sl-{name}-")]
    directory = DEFAULT_ROOT / name
    if directory.exists():
        left.append(f"dir {directory}")
    left += [f"mount {m}" for m in mounts_under(directory)]
    left += [f"pid {p}" for p in pids if is_alive(p)]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.stat(proc / "ns" / "net").st_ino in netns_inodes:
                    left.append(f"pid {proc.name} in a lab namespace")
            except OSError:
                continue
    return left


def _inodes(lab: Lab) -> set[int]:
    return {os.stat(NETNS_DIR / ns).st_ino for ns in os.listdir(NETNS_DIR) if lab.name in ns}


def test_destroy_leaves_nothing_behind(tmp_path: Path) -> None:
    lab = Lab.create(f"d{os.getpid()}", hosts=1)
    h1 = lab.host("h1")
    h1.run_container("sleeper", network="bridge")
    recorded = h1.popen(["sleep", "1000"], log=tmp_path / "sleep.log")
    # A daemon that detaches itself (as `shoal up` does) is not recorded: found by namespace.
    h1.exec(["sh", "-c", "sleep 1000 >/dev/null 2>&1 &"])
    pids = [recorded.pid, h1.container_pid("sleeper")]
    inodes = _inodes(lab)
    assert mounts_under(lab.dir)  # overlay2 and netns mounts exist before
    lab.destroy()
    assert _leftovers(lab.name, inodes, pids) == []
    lab.destroy()  # idempotent


def test_sweep_removes_an_aborted_create_but_keeps_persistent_labs() -> None:
    aborted, kept = f"a{os.getpid()}", f"p{os.getpid()}"
    persistent = Lab.create(kept, hosts=1, persistent=True)
    try:
        # Kill a creating process right after it started its dockerds.
        creator = subprocess.Popen(
            [sys.executable, "-c", f"from shoal.lab import Lab; Lab.create({aborted!r}, 2)"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert creator.stderr is not None
        for line in creator.stderr:
            if "starting dockerd on h2" in line:
                break
        creator.kill()
        creator.wait()
        partial = Lab.load(aborted)
        inodes = _inodes(partial)
        pids = [p.pid for p in partial._state.procs]
        assert pids, "the dockerds were recorded before the abort"
        removed = sweep()
        assert aborted in removed and kept not in removed
        assert _leftovers(aborted, inodes, pids) == []
        assert Lab.exists(kept)
    finally:
        persistent.destroy()


_STAND_IN = """
import socket, sys, time
args = sys.argv[1:]
if args[0] == "server":
    host, port = args[args.index("--listen") + 1].rsplit(":", 1)
    sock = socket.create_server((host, int(port)))
    time.sleep(3600)
elif args[:2] == ["token", "create"]:
    print("created a reusable token:" if "--reusable" in args else "created a token:")
    print("SHOAL-1-standin")
"""


def test_server_lifecycle_with_a_stand_in_server(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lab drives `shoal server` / `shoal token create` by their CLI contract only; a
    # stand-in honouring that contract exercises start, status, token and stop.
    script = tmp_path / "standin.py"
    script.write_text(_STAND_IN)
    monkeypatch.setattr(lab_module, "shoal_argv", lambda: [sys.executable, str(script)])
    url = lab.start_server()
    assert url == "https://192.0.2.2:8443"
    assert lab.start_server() == url  # already running: left as is
    connect = "import socket; socket.create_connection(('192.0.2.2', 8443), 2).close()"
    lab.host("h1").exec([sys.executable, "-c", connect])  # reachable over the underlay
    assert lab.create_token() == "SHOAL-1-standin"
    status = Lab.load(lab.name).status()
    assert status["server"]["running"] and status["server"]["url"] == url
    assert status["token"] == "SHOAL-1-standin"
    pid = status["server"]["pid"]
    lab.stop_server(kill=True)
    assert not is_alive(pid)
    assert not Lab.load(lab.name).status()["server"]["running"]


def test_upstream_names_resolve_inside_the_lab(lab: Lab) -> None:
    # The lab's own "internet" resolver on the server host; nothing leaves the machine.
    h1 = lab.host("h1")
    out = h1.exec(["busybox", "nslookup", "-type=a", "www.lab.test", "192.0.2.2"]).stdout
    assert "192.0.2.80" in out
    missing = h1.exec(["busybox", "nslookup", "-type=a", "nope.lab.test", "192.0.2.2"], check=False)
    assert missing.returncode != 0 and "192.0.2.80" not in missing.stdout
    # Commands on a host (the agent among them) see a resolv.conf naming it.
    for host in lab.hosts:
        resolv = host.exec(["cat", "/etc/resolv.conf"]).stdout
        assert resolv.split() == ["nameserver", "192.0.2.2"]
    assert "192.0.2.2" not in Path("/etc/resolv.conf").read_text()  # the machine's is untouched
    status = Lab.load(lab.name).status()["upstream_dns"]
    assert status["running"] and status["address"] == "192.0.2.2:53"
