"""`shoal netcheck`'s report: the relays with their connect times and the nearest marked (the
measurement itself runs in tests/e2e/test_nat.py)."""

from __future__ import annotations

from shoal.agent.netcheck import NetcheckReport, TcpCheck


def check(target: str, ms: float | None) -> TcpCheck:
    detail = f"{target} connected in {ms:.1f} ms" if ms is not None else f"{target}: timed out"
    return TcpCheck(target=target, open=ms is not None, detail=detail, connect_ms=ms)


def test_each_relay_is_listed_with_its_connect_time_and_the_nearest_is_marked() -> None:
    report = NetcheckReport(
        server="192.0.2.2",
        nat="udp-blocked",
        udp=False,
        mapped=(None, None),
        endpoints=(),
        tcp_443=check("192.0.2.2:443", 1.0),
        control=check("192.0.2.2:8443", 1.0),
        relays=(check("192.0.2.2:443", 80.0), check("198.51.100.7:443", 12.0)),
        nearest_relay="198.51.100.7:443",
    )
    assert [line for line in report.lines() if line.startswith("relay:")] == [
        "relay:     yes (192.0.2.2:443 connected in 80.0 ms)",
        "relay:     yes (198.51.100.7:443 connected in 12.0 ms), nearest",
    ]
