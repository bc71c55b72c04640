"""The lab's NAT routers behave as their kind says (see `shoal.lab.nat` for how each is built).

A reflector on the underlay (the server host) reports the source address and port it sees;
each host probes it from one local port towards two of its ports, and the reflector answers a
"poke" also from a third port the host never sent to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.lab import Lab, sweep
from shoal.lab.nat import parse_nat
from shoal.lab.procs import NETNS_DIR

pytestmark = pytest.mark.e2e

HERE = Path(__file__).parent
SERVER = "192.0.2.2"
LOCAL_PORT = 40000


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    sweep()
    nat = parse_nat("h1=easy:home,h2=easy:home,h3=hard,h4=udp-blocked")
    lab = Lab.create(f"n{os.getpid()}", hosts=5, nat=nat)
    reflector = None
    try:
        reflector = subprocess.Popen(
            ["nsenter", f"--net={NETNS_DIR / lab.server_netns}", sys.executable,
             str(HERE / "reflector.py"), SERVER],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert reflector.stdout is not None
        assert reflector.stdout.readline().strip() == "ready"
        yield lab
    finally:
        if reflector is not None:
            reflector.kill()
            reflector.wait()
        lab.destroy()


def probe(lab: Lab, host: str) -> dict[str, object]:
    out = (
        lab.host(host)
        .exec([sys.executable, str(HERE / "natprobe.py"), SERVER, str(LOCAL_PORT)])
        .stdout
    )
    result: dict[str, object] = json.loads(out)
    return result


def test_a_public_host_is_seen_as_itself(lab: Lab) -> None:
    h5 = lab.host("h5")
    assert h5.nat is None and h5.public_ip == h5.underlay_ip
    got = probe(lab, "h5")
    me = f"{h5.underlay_ip}:{LOCAL_PORT}"
    assert got == {"seen": {"3478": me, "3479": me}, "poked": True, "tcp443": True}


def test_easy_nat_maps_and_filters_independently_of_the_endpoint(lab: Lab) -> None:
    h1 = lab.host("h1")
    assert str(h1.underlay_ip) == "192.168.1.1" and str(h1.public_ip) == "192.0.2.11"
    got = probe(lab, "h1")
    # One outside port for both destinations (the inside port, kept), and a packet from a
    # port never contacted gets in.
    mapped = f"{h1.public_ip}:{LOCAL_PORT}"
    assert got == {"seen": {"3478": mapped, "3479": mapped}, "poked": True, "tcp443": True}


def test_two_hosts_behind_one_nat_share_its_address_not_its_port(lab: Lab) -> None:
    first, second = probe(lab, "h1"), probe(lab, "h2")
    h2 = lab.host("h2")
    assert h2.public_ip == lab.host("h1").public_ip
    seen = second["seen"]
    assert isinstance(seen, dict)
    assert seen["3478"] == seen["3479"]
    ip, port = str(seen["3478"]).split(":")
    assert ip == str(h2.public_ip) and port != str(LOCAL_PORT)  # h1 holds that one
    assert second["poked"] is True and first["seen"] != second["seen"]
    # And they reach each other on the inside.
    h2.exec(["busybox", "ping", "-c", "1", "-W", "2", str(lab.host("h1").underlay_ip)])


def test_hard_nat_maps_each_destination_to_a_new_port_and_filters(lab: Lab) -> None:
    h3 = lab.host("h3")
    got = probe(lab, "h3")
    seen = got["seen"]
    assert isinstance(seen, dict)
    a, b = str(seen["3478"]), str(seen["3479"])
    assert a.split(":")[0] == b.split(":")[0] == str(h3.public_ip)
    assert a != b, "a symmetric NAT gives each destination its own outside port"
    assert got["poked"] is False and got["tcp443"] is True


def test_udp_blocked_passes_only_tcp_to_web_ports(lab: Lab) -> None:
    got = probe(lab, "h4")
    assert got == {"seen": {"3478": None, "3479": None}, "poked": False, "tcp443": True}


def test_nothing_comes_in_unasked(lab: Lab) -> None:
    # From the underlay, the routers' addresses answer nothing on a port never used inside.
    r = lab.host("h5").exec(
        [sys.executable, "-c",
         "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1);"
         "s.sendto(b'x', ('192.0.2.11', 41234));\n"
         "try:\n s.recvfrom(10); print('answered')\nexcept OSError: print('silent')"],
    )  # fmt: skip
    assert r.stdout.strip() == "silent"
