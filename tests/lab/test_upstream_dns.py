"""The lab's upstream resolver on its own, on loopback: a static zone through shoal's responder."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address

import dns.message
import dns.query
import dns.rcode

from shoal.dns import Outcome
from shoal.lab.upstream_dns import StaticZone


def test_static_zone() -> None:
    zone = StaticZone({"www.lab.test": IPv4Address("192.0.2.80")})
    assert zone.resolve("WWW.lab.test.", "A").addresses == (IPv4Address("192.0.2.80"),)
    assert zone.resolve("www.lab.test", "AAAA").outcome is Outcome.NODATA
    assert zone.resolve("nope.lab.test", "A").outcome is Outcome.NXDOMAIN
    assert zone.resolve("example.com", 1).outcome is Outcome.NXDOMAIN  # never forwarded


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_process_answers_udp_and_tcp_and_stops_on_sigterm() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal.lab.upstream_dns",
            "--listen",
            f"127.0.0.1:{port}",
            "--record",
            "db.lab.test=192.0.2.81",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "upstream-dns: zone lab.test" in proc.stdout.readline()
        for ask in (dns.query.udp, dns.query.tcp):
            r = ask(dns.message.make_query("www.lab.test", "A"), "127.0.0.1", timeout=3, port=port)
            assert r.answer[0][0].address == "192.0.2.80"
            r = ask(dns.message.make_query("db.lab.test", "A"), "127.0.0.1", timeout=3, port=port)
            assert r.answer[0][0].address == "192.0.2.81"
            r = ask(dns.message.make_query("x.lab.test", "A"), "127.0.0.1", timeout=3, port=port)
            assert r.rcode() == dns.rcode.NXDOMAIN
        proc.terminate()
        deadline = time.monotonic() + 5
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
