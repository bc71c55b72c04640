"""`dns.probe.ask` (shoal doctor's DNS question) against the real responder and a dead port."""

from __future__ import annotations

import socket

from shoal.dns.probe import DnsAnswer, ask
from shoal.dns.server import DnsServer


async def test_the_responder_answers_and_a_dead_port_does_not(server: DnsServer) -> None:
    host, port = server.bound[0]
    answer = await ask(host, port, "nothing.example.invalid")
    assert answer.rcode is not None and answer.error is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound but never read: the query goes unanswered
        silent = s.getsockname()[1]
        assert await ask("127.0.0.1", silent, "x.shoal", timeout=0.2) == DnsAnswer(
            None, "no answer within 0.2s"
        )
