"""The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright). First against a real `shoal server` on 127.0.0.1 with nodes registered and
heart-beating through the real control client (a short heartbeat timeout; a label carrying a
script runs nothing), then against the lab: its hosts listed, a container started with
`docker run` on a host appears, the host whose agent stops turns red within the timeout.

A browser that cannot start is a failure that says why (never a skip): `make install`
installs Debian's chromium (Playwright's own browser download needs the internet)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from playwright.async_api import Browser, Error, Page, async_playwright, expect

from shoal import __version__
from shoal.control.app import ADMIN_TOKEN_FILE, RunningServer, start_server
from shoal.control.config import load_config
from shoal.controlclient.client import ControlClient
from shoal.lab import Lab
from shoal.model.api import (
    ContainerReport,
    ContainersReport,
    NodeReport,
    PathCounts,
    PeerReport,
    RegisterRequest,
    TokenCreateRequest,
)
from shoal.model.keys import PrivateKey
from tests.e2e.runbook import up

pytestmark = pytest.mark.e2e

HEARTBEAT = 3.0  # seconds: a short timeout keeps the "turns red" wait short
XSS = "<script>window.__pwned = 1</script>"
XSS_ATTR = '"><img src=x onerror="window.__pwned = 2">'


def chromium_path() -> str:
    path = os.environ.get("SHOAL_CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.fail(
            "no Chromium: install Debian's `chromium` (scripts/install-deps.sh does) or set "
            "SHOAL_CHROMIUM to a Chromium binary"
        )
    return path


@contextlib.asynccontextmanager
async def chromium(executable: str | None = None) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        try:
            browser = await pw.chromium.launch(executable_path=executable or chromium_path())
        except Error as exc:
            pytest.fail(f"headless Chromium did not start: {exc}")
        try:
            yield browser
        finally:
            await browser.close()


class Host:
    """A node as an agent would be: registered, long-polling (its heartbeat) until stopped."""

    def __init__(self, server: RunningServer, name: str) -> None:
        self.server, self.name = server, name
        self.key = PrivateKey.generate()
        self.client = ControlClient(server.url, server.ca.ca_pem, node_key=self.key)
        self._beat: asyncio.Task[None] | None = None
        self.subnet = IPv4Network("0.0.0.0/32")  # its container subnet, once joined

    async def join(self, token: str) -> None:
        await self.client.__aenter__()
        reply = await self.client.register(
            RegisterRequest(token=token, name=self.name, public_key=self.key.public_key())
        )
        self.subnet = reply.netmap.self_node.subnet
        self.node_id = reply.node_id
        self._beat = asyncio.create_task(self._poll(), name=f"heartbeat-{self.name}")

    async def _poll(self) -> None:
        since = 0
        while True:
            update = await self.client.poll(since=since, wait=1.0)
            since = update.revision if update.revision else since

    async def run_container(self, name: str, labels: tuple[tuple[str, str], ...] = ()) -> None:
        box = ContainerReport(
            id=os.urandom(32).hex(),
            name=name,
            ip=self.subnet.network_address + 2,
            labels=labels,
        )
        await self.client.report_containers(ContainersReport(containers=(box,)))

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None

    async def close(self) -> None:
        await self.stop()
        await self.client.aclose()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start_server(
        load_config(listen="127.0.0.1:0", data_dir=tmp_path / "server", heartbeat_timeout=HEARTBEAT)
    )
    try:
        yield running
    finally:
        await running.close()


async def log_in(page: Page, url: str, token: str) -> None:
    await page.goto(f"{url}/dashboard")
    await page.fill("#token", token)
    await page.click("#login button[type=submit]")
    await expect(page.locator("#live")).to_be_visible()


async def test_the_dashboard_shows_the_mesh_live_in_chromium(server: RunningServer) -> None:
    async with ControlClient(server.url, server.ca.ca_pem, server.admin_token) as admin:
        token = (
            await admin.create_token(TokenCreateRequest(reusable=True, expires_in_seconds=None))
        ).token
    hosts = [Host(server, name) for name in ("h1", "h2", "h3")]
    for host in hosts:
        await host.join(token)
    try:
        async with chromium() as browser:
            # The server's CA is the mesh's own: this browser has not been told to trust it.
            context = await browser.new_context(ignore_https_errors=True)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            fetched: list[str] = []
            page.on("request", lambda r: fetched.append(r.url.split("/", 3)[3]))

            await page.goto(f"{server.url}/dashboard")
            await expect(page.locator("#login")).to_be_visible()
            await page.fill("#token", "SHOAL-ADMIN-1-wrong-token")
            await page.click("#login button[type=submit]")
            await expect(page.locator("#login-error")).to_contain_text("malformed admin token")
            await log_in(page, server.url, server.admin_token)

            for host in hosts:
                row = page.locator(f'tr.node[data-node="{host.name}"]')
                await expect(row).to_have_class("node online")
            await expect(page.locator("#conn")).to_have_text("live")

            # h1 reports its paths: version, handshake age and RTT show in the matrix.
            h2, h3 = hosts[1].node_id, hosts[2].node_id
            await hosts[0].client.report(
                NodeReport(
                    version="9.8.7",
                    counts=PathCounts(direct=1, relayed=1, rtt_median_ms=0.6, rtt_max_ms=0.8),
                    peers=(
                        PeerReport(peer=h2, path="direct", handshake_age_seconds=4, rtt_ms=0.42),
                        PeerReport(peer=h3, path="relayed", handshake_age_seconds=70),
                    ),
                )
            )
            version = page.locator('tr.node[data-node="h1"] td.version')
            await expect(version).to_have_text("9.8.7", timeout=15_000)  # the 10 s report look
            h1_row = page.locator("#paths tr").nth(1)
            await expect(h1_row.locator("td").nth(1)).to_contain_text("direct")
            await expect(h1_row.locator("td").nth(1)).to_contain_text("RTT 0.4 ms")
            await expect(h1_row.locator("td").nth(1)).to_contain_text("handshake")
            await expect(h1_row.locator("td").nth(2)).to_contain_text("relayed")
            await expect(page.locator('tr.node[data-node="h1"] td.peers')).to_contain_text(
                "RTT median 0.6 ms, max 0.8 ms"
            )

            # A container started on h2 appears, live, with its label shown as text.
            await hosts[1].run_container(
                "web", labels=(("shoal.note", XSS), (f"shoal.x{XSS_ATTR}"[:64], "1"))
            )
            box = page.locator('tr.container[data-container="web"]')
            await expect(box).to_be_visible(timeout=5_000)
            await expect(box).to_contain_text("h2")
            await expect(box).to_contain_text(XSS)
            await expect(page.locator("#events")).to_contain_text("container web started on h2")

            # h3 stops: red within the heartbeat timeout (+ the 1 s look and a poll).
            await hosts[2].stop()
            stopped = asyncio.get_running_loop().time()
            red = page.locator('tr.node[data-node="h3"]')
            await expect(red).to_have_class("node offline", timeout=(HEARTBEAT + 3) * 1000)
            took = asyncio.get_running_loop().time() - stopped
            assert took <= HEARTBEAT + 3, took
            color = await red.locator("td").first.evaluate(
                "td => getComputedStyle(td).backgroundColor"
            )
            assert color == "rgb(253, 236, 236)"  # the offline row's red
            await expect(page.locator("#events")).to_contain_text("node h3 went offline")

            assert await page.evaluate("window.__pwned") is None  # no injected script ran
            assert errors == []
            # Live over one event stream, not polls.
            assert fetched.count("dashboard/events") == 1, fetched
            assert not [u for u in fetched if u.startswith("dashboard/live")], fetched
            print(f"h3 stopped → red after {took:.1f} s (heartbeat timeout {HEARTBEAT:g} s)")
    finally:
        for host in hosts:
            await host.close()


LAB_HEARTBEAT = 15.0  # seconds: the lab's server runs with the default timeout


async def test_the_dashboard_follows_the_lab_in_chromium(
    lab: Lab, join_token: str, tmp_path: Path
) -> None:
    """Chromium runs in the lab server's network namespace (the lab has no route out, and the
    browser reaches the server as an operator on its LAN would); Playwright drives it over a
    pipe, which crosses namespaces."""
    for host in lab.hosts:
        up(lab, host, join_token)  # "already running" when another module joined it
    h3 = lab.hosts[2]
    wrapper = tmp_path / "chromium-in-lab"
    wrapper.write_text(
        f'#!/bin/sh\nexec nsenter --net=/var/run/netns/{lab.server_netns} {chromium_path()} "$@"\n'
    )
    wrapper.chmod(0o755)
    assert lab.server_url is not None
    token = (lab.server_data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    async with chromium(str(wrapper)) as browser:
        context = await browser.new_context(ignore_https_errors=True)
        page = await context.new_page()
        await log_in(page, lab.server_url, token)
        for host in lab.hosts:
            await expect(page.locator(f'tr.node[data-node="{host.name}"]')).to_have_class(
                "node online"
            )
        # Blocking lab calls run in a thread: the loop keeps serving Playwright meanwhile.
        await asyncio.to_thread(h3.run_container, "dash-web")
        try:
            box = page.locator('tr.container[data-container="dash-web"]')
            await expect(box).to_be_visible(timeout=15_000)
            await expect(box).to_contain_text(h3.name)
            ip = await asyncio.to_thread(h3.container_ip, "dash-web")
            await expect(box).to_contain_text(str(ip))

            # The agents report their version and paths: each pair direct, with the RTT of
            # a ping through the tunnel (a report every 30 s, looked at every 10 s).
            for host in lab.hosts:
                version = page.locator(f'tr.node[data-node="{host.name}"] td.version')
                await expect(version).to_have_text(__version__, timeout=45_000)
            cell = page.locator("#paths tr").nth(1).locator("td").nth(1)
            await expect(cell).to_contain_text("direct", timeout=45_000)
            await expect(cell).to_contain_text(" ms", timeout=45_000)
            shot = os.environ.get("SHOAL_DASHBOARD_SCREENSHOT")
            if shot:
                await page.screenshot(path=shot, full_page=True)

            pid = int((h3.state_dir / "agent.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            stopped = asyncio.get_running_loop().time()
            row = page.locator(f'tr.node[data-node="{h3.name}"]')
            await expect(row).to_have_class("node offline", timeout=(LAB_HEARTBEAT + 5) * 1000)
            took = asyncio.get_running_loop().time() - stopped
            await expect(page.locator("#events")).to_contain_text(f"node {h3.name} went offline")
            print(f"lab: {h3.name}'s agent stopped → red after {took:.1f} s")
            assert took <= LAB_HEARTBEAT + 3
        finally:
            await asyncio.to_thread(h3.docker, "rm", "-f", "dash-web", check=False)
            await asyncio.to_thread(up, lab, h3, None)
