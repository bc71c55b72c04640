"""Attack a real shoal server on loopback and measure what a real agent sees meanwhile.

    .venv/bin/python scripts/attack_server.py [--idle 1100] [--slowloris 200] [--fd-limit 1024]

Starts `shoal server` as its own process on 127.0.0.1 (with the fd limit of a systemd unit:
soft 1,024; `--hard-fd-limit` makes the hard limit 1,024 as well, so the server cannot raise
it), then runs phases of --phase-seconds each. In every phase one attacker process (its own
event loop, so its work does not slow the measuring one) attacks while this process, a
legitimate agent using shoal's own ControlClient from 127.0.0.1, registers a new node and
polls once a second (the per-source registration rate allows that). Attacks come from other
127.x addresses, as from other hosts:

  baseline   nothing
  idle       --idle TLS connections from 8 addresses, reopened when the server closes them
  slowloris  --slowloris connections sending one byte every 5 s
  badtokens  as many wrong join tokens as 16 concurrent requests can send
  node       an attacker holding a node's key: 2,000 long-polls, the largest valid
             container reports (alternating, so each is a change every node receives) and
             3 MB reports, in a loop
  all        all of the above at once

Prints per phase: the agent's registration and poll latency (median and max, ms), the
attacker's counts and the server's RSS; exits 1 if any legitimate request failed or took
longer than --max-latency seconds. Not part of the shipped package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from shoal.controlclient.client import ControlClient
from shoal.controlclient.tls import ssl_context
from shoal.model.api import RegisterRequest, TokenCreateRequest
from shoal.model.keys import PrivateKey, PublicKey
from shoal.model.nodeauth import shared_key, sign

PHASES = ("baseline", "idle", "slowloris", "badtokens", "node", "all")


@dataclass(frozen=True)
class Target:
    url: str
    port: int
    ca_pem: bytes
    admin: str
    token: str  # reusable join token
    server_key: str  # what node signatures are keyed with (GET /v1/key)


class Signer:
    """Signs requests as the holder of `key` (an attacker can make as many keys as it likes)."""

    def __init__(self, target: Target, key: PrivateKey) -> None:
        server = PublicKey.parse(target.server_key)
        self.key = key
        self._mac_key = shared_key(key, server, key.public_key(), server)

    def headers(self, method: str, target: str, body: bytes = b"") -> dict[str, str]:
        now = int(time.time())
        signature = sign(self._mac_key, self.key.public_key(), method, target, body, now)
        return {"Authorization": signature.header(), "Content-Type": "application/json"}


# The attacker (a separate process).


def attacker_main(phase: str, target: Target, args: dict[str, Any], stop: Any, out: Any) -> None:
    out.put(asyncio.run(attack(phase, target, args, stop)))


async def attack(phase: str, target: Target, args: dict[str, Any], stop: Any) -> dict[str, Any]:
    stats: Counter[str] = Counter()
    tasks: list[asyncio.Task[None]] = []
    both = phase == "all"
    ctx = ssl_context(target.ca_pem)
    if phase == "idle" or both:
        for i in range(args["idle"]):
            tasks.append(asyncio.create_task(idle(target, ctx, f"127.0.0.{2 + i % 8}", stats)))
    if phase == "slowloris" or both:
        for i in range(args["slowloris"]):
            tasks.append(asyncio.create_task(slowloris(target, ctx, f"127.0.1.{1 + i % 4}", stats)))
    if phase == "badtokens" or both:
        tasks.append(asyncio.create_task(bad_tokens(target, ctx, stats)))
    if phase == "node" or both:
        tasks.append(asyncio.create_task(node_attack(target, args["long_polls"], stats)))
    while not stop.is_set():
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return dict(stats)


async def open_tls(
    target: Target, ctx: ssl.SSLContext, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", target.port, ssl=ctx, server_hostname="127.0.0.1", local_addr=(source, 0)
    )


async def idle(target: Target, ctx: ssl.SSLContext, source: str, stats: Counter[str]) -> None:
    while True:
        try:
            reader, writer = await open_tls(target, ctx, source)
            stats["idle opened"] += 1
            await reader.read()  # until the server closes it
            stats["idle closed by server"] += 1
            writer.close()
        except (OSError, ssl.SSLError):
            stats["idle refused"] += 1
            await asyncio.sleep(0.2)


async def slowloris(target: Target, ctx: ssl.SSLContext, source: str, stats: Counter[str]) -> None:
    while True:
        try:
            reader, writer = await open_tls(target, ctx, source)
            stats["slowloris opened"] += 1
            started = time.monotonic()
            for byte in b"POST /v1/register HTTP/1.1\r\nHost: shoal\r\nX-Pad: " + b"a" * 10_000:
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    async with asyncio.timeout(5):
                        if not await reader.read(1):
                            break
                except TimeoutError:
                    continue
            stats["slowloris closed by server"] += 1
            stats["slowloris held ms total"] += int((time.monotonic() - started) * 1000)
            writer.close()
        except (OSError, ssl.SSLError):
            stats["slowloris refused"] += 1
            await asyncio.sleep(0.2)


async def bad_tokens(target: Target, ctx: ssl.SSLContext, stats: Counter[str]) -> None:
    """Wrong join tokens in properly signed registrations: the most work per request an
    attacker without a token can ask of the server."""
    wrong = target.token[:-8] + "00000000"
    signer = Signer(target, PrivateKey.generate())
    body = json.dumps(
        {"token": wrong, "name": "evil", "public_key": str(signer.key.public_key())}
    ).encode()
    connector = aiohttp.TCPConnector(ssl=ctx, local_addr=("127.0.2.1", 0), limit=16)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while True:
                try:
                    async with session.post(
                        target.url + "/v1/register",
                        data=body,
                        headers=signer.headers("POST", "/v1/register", body),
                    ) as resp:
                        await resp.read()
                        stats[f"badtokens {resp.status}"] += 1
                except aiohttp.ClientError:
                    stats["badtokens error"] += 1

        await asyncio.gather(*(worker() for _ in range(16)))


async def node_attack(target: Target, long_polls: int, stats: Counter[str]) -> None:
    """What one node's key can do: many long-polls, the largest valid reports, 3 MB ones."""
    signer = Signer(target, PrivateKey.generate())
    async with ControlClient(target.url, target.ca_pem, node_key=signer.key) as client:
        me = await client.register(
            RegisterRequest(
                token=target.token,
                name="evil-" + secrets.token_hex(3),
                public_key=signer.key.public_key(),
            )
        )
    subnet = me.netmap.self_node.subnet
    hosts = list(subnet.hosts())[1:]

    def report(flavour: int) -> bytes:
        return json.dumps(
            {
                "containers": [
                    {
                        "id": f"{flavour:02x}{i:062x}",
                        "name": f"{'x' * 120}{i}",
                        "ip": str(ip),
                        "project": "p" * 128,
                        "service": "s" * 128,
                        "ports": [{"port": p} for p in range(1, 33)],
                    }
                    for i, ip in enumerate(hosts[:512])
                ]
            }
        ).encode()

    reports = [report(1), report(2)]
    huge = json.dumps({"containers": [{"id": "0" * 64, "name": "a" * 3_000_000}]}).encode()

    def session_from(source: str) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            ssl=ssl_context(target.ca_pem), local_addr=(source, 0), limit=0
        )
        return aiohttp.ClientSession(connector=connector)

    # The long-polls and the reports from two addresses: the polls fill their source's cap.
    async with session_from("127.0.3.1") as session, session_from("127.0.3.2") as reports_session:

        async def long_poll() -> None:
            while True:
                path = f"/v1/netmap?since={me.netmap.revision}&wait=30"
                try:
                    async with session.get(
                        target.url + path, headers=signer.headers("GET", path)
                    ) as resp:
                        await resp.read()
                        stats[f"long-poll returned {resp.status}"] += 1
                except aiohttp.ClientError:
                    stats["long-poll error"] += 1
                    await asyncio.sleep(1.0)

        async def reporter() -> None:
            n = 0
            while True:
                n += 1
                body = huge if n % 5 == 0 else reports[n % 2]
                try:
                    async with reports_session.post(
                        target.url + "/v1/containers",
                        data=body,
                        headers=signer.headers("POST", "/v1/containers", body),
                    ) as resp:
                        await resp.read()
                        stats[f"report {len(body) // 1024} KiB {resp.status}"] += 1
                except aiohttp.ClientError as exc:
                    stats[f"report error {type(exc).__name__}"] += 1

        await asyncio.gather(*(long_poll() for _ in range(long_polls)), reporter())


# The legitimate agent (this process).


async def measure(target: Target, seconds: float) -> tuple[list[float], list[float], int]:
    """Register a new node and poll with it once a second, each on a new connection as a
    starting agent has; latencies (s), failures."""
    registrations: list[float] = []
    polls: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        key = PrivateKey.generate()
        try:
            async with ControlClient(target.url, target.ca_pem, node_key=key) as client:
                reply = await client.register(
                    RegisterRequest(
                        token=target.token,
                        name="agent-" + secrets.token_hex(4),
                        public_key=key.public_key(),
                    )
                )
            registrations.append(time.monotonic() - started)
            async with ControlClient(target.url, target.ca_pem, node_key=key) as node:
                started = time.monotonic()
                await node.poll(since=reply.netmap.revision, wait=0)
                polls.append(time.monotonic() - started)
        except Exception as exc:
            failures += 1
            print(f"  legitimate request failed: {exc}", file=sys.stderr)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return registrations, polls, failures


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.0f} / {max(values) * 1000:.0f}"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_server(data_dir: Path, fd_limit: int, hard: bool) -> tuple[subprocess.Popen[bytes], Path]:
    def limit() -> None:
        _, old_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit if hard else old_hard))

    log = data_dir.parent / "server.log"
    shoal = Path(sys.executable).with_name("shoal")
    proc = subprocess.Popen(
        [str(shoal), "server", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        preexec_fn=limit,
    )
    return proc, log


async def main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="shoal-attack-"))
    data = work / "server"
    proc, log = start_server(data, args.fd_limit, args.hard_fd_limit)
    try:
        for _ in range(200):
            if (data / "server.json").exists() and (data / "admin.token").exists():
                break
            await asyncio.sleep(0.05)
        url = json.loads((data / "server.json").read_text())["url"]
        ca_pem = (data / "ca.pem").read_bytes()
        admin = (data / "admin.token").read_text().strip()
        async with ControlClient(url, ca_pem, admin) as client:
            token = (await client.create_token(TokenCreateRequest(reusable=True))).token
        connector = aiohttp.TCPConnector(ssl=ssl_context(ca_pem))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(url + "/v1/key") as resp,
        ):
            server_key = (await resp.json())["public_key"]
        target = Target(
            url=url,
            port=int(url.rsplit(":", 1)[1]),
            ca_pem=ca_pem,
            admin=admin,
            token=token,
            server_key=server_key,
        )
        print(
            f"server pid {proc.pid} at {url}, fd limit {args.fd_limit} "
            f"({'hard' if args.hard_fd_limit else 'soft'}), {args.phase_seconds:g} s per phase"
        )
        print(
            f"{'phase':<10} {'register ms (median / max)':>27} {'poll ms':>13} {'fail':>5} "
            f"{'RSS MB':>7}  attacker"
        )
        worst = 0.0
        failed = 0
        spawn = mp.get_context("spawn")
        for phase in args.phases:
            stop, out = spawn.Event(), spawn.Queue()
            attacker = None
            if phase != "baseline":
                attacker = spawn.Process(
                    target=attacker_main,
                    args=(
                        phase,
                        target,
                        {
                            "idle": args.idle,
                            "slowloris": args.slowloris,
                            "long_polls": args.long_polls,
                        },
                        stop,
                        out,
                    ),
                )
                attacker.start()
                await asyncio.sleep(args.ramp_seconds)  # let the attack build up
            registrations, polls, failures = await measure(target, args.phase_seconds)
            rss = rss_mb(proc.pid)
            stats: dict[str, int] = {}
            if attacker is not None:
                stop.set()
                stats = out.get(timeout=60)
                attacker.join(timeout=30)
            worst = max([worst, *registrations, *polls])
            failed += failures
            summary = ", ".join(f"{k}: {v}" for k, v in sorted(stats.items()))
            print(
                f"{phase:<10} {ms(registrations):>27} {ms(polls):>13} {failures:>5} "
                f"{rss:>7.0f}  {summary}"
            )
        lines = log.read_text(errors="replace").splitlines()
        tracebacks = sum(line.startswith("Traceback") for line in lines)
        longest = max((len(line) for line in lines), default=0)
        print(f"server log: {len(lines)} lines, {tracebacks} tracebacks, longest {longest} chars")
        print(f"worst legitimate latency {worst * 1000:.0f} ms, {failed} failures")
        return 0 if failed == 0 and worst <= args.max_latency else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1100, help="idle TLS connections")
    parser.add_argument("--slowloris", type=int, default=200, help="slowloris connections")
    parser.add_argument("--long-polls", type=int, default=2000, help="with one credential")
    parser.add_argument("--fd-limit", type=int, default=1024, help="the server's soft fd limit")
    parser.add_argument("--hard-fd-limit", action="store_true", help="make it the hard limit too")
    parser.add_argument("--phase-seconds", type=float, default=10.0)
    parser.add_argument("--ramp-seconds", type=float, default=3.0)
    parser.add_argument("--max-latency", type=float, default=2.0, help="seconds; else exit 1")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    return parser.parse_args()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main(parse())))
