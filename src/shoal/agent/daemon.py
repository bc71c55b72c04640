"""The agent daemon: preflight, join or resume, first apply, then follow the netmap.

    start()  checks (root, dockerd, WireGuard), joins or resumes, configures the host once;
             a failure here leaves nothing behind: a fresh join is undone on the server too.
    Agent.run()  owns its tasks: the netmap long-poll, the reconcile loop, the Docker watcher
             and the container reporter; beside them the DNS responder and the local API.

Names resolve from the netmap as soon as it arrives (the DNS table is swapped before the host
is reconciled): discovery latency never waits for iptables or WireGuard.

SIGTERM stops the agent and leaves the host configured: the mesh keeps forwarding and a new
agent picks up without dropping a packet. Only `shoal down` undoes the configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from shoal.agent.config import AgentConfig
from shoal.agent.errors import NotJoined, NotRoot
from shoal.agent.facts import guess_advertise_addr, occupied_prefixes
from shoal.agent.health import Health, control_unreachable
from shoal.agent.localapi import serve
from shoal.agent.reconciler import Reconciler
from shoal.agent.statefiles import CachedNetmap, NodeIdentity, StateDir
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import ControlRejected, ControlUnreachable, CredentialRejected
from shoal.controlclient.tls import fetch_pinned_ca
from shoal.dataplane import DataPlane, select_dataplane
from shoal.dns import DnsServer, RecordTable, upstreams_from_resolv_conf
from shoal.docker import ContainerWatcher, DockerHost
from shoal.model.api import ContainerReport, ContainersReport, RegisterRequest, ServiceInfo
from shoal.model.catalog import build_catalog
from shoal.model.errors import ShoalError
from shoal.model.keys import PrivateKey
from shoal.model.netmap import Endpoint, NetworkMap
from shoal.model.status import AgentStatus, PeerStatus
from shoal.model.tokens import parse_join_token
from shoal.plan.hostconfig import DOCKER_NETWORK, INTERFACE, plan_host

log = logging.getLogger("shoal.agent")

RETRY_SECONDS = (1.0, 2.0, 5.0)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        state: StateDir,
        identity: NodeIdentity,
        cached: CachedNetmap,
        private_key: PrivateKey,
        dataplane: DataPlane,
        docker: DockerHost,
    ) -> None:
        self.config = config
        self.state = state
        self.identity = identity
        self.cached = cached
        self.private_key = private_key
        self.dataplane = dataplane
        self.docker = docker
        self.reconciler = Reconciler(dataplane, docker)
        self.health = Health()
        self.client = ControlClient(
            identity.server_url, identity.ca_pem.encode(), node_key=private_key
        )
        self.dns_table = RecordTable.from_netmap(cached.netmap)
        self._containers: list[ContainerReport] | None = None  # newest set not yet reported
        self._containers_changed = asyncio.Event()
        self._stop = asyncio.Event()

    # -- the tasks -------------------------------------------------------------------------

    async def run(self) -> None:
        runner = await serve(self.state.socket, self.status, self.down, self.services)
        dns = await self._start_dns()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.state.pidfile.write_text(f"{os.getpid()}\n")
        log.info("agent running: %s", self.identity.name)
        watcher = ContainerWatcher(self.docker, DOCKER_NETWORK, self._on_containers)
        try:
            async with self.client, asyncio.TaskGroup() as tasks:
                workers = [
                    tasks.create_task(self._follow_netmap(), name="netmap-poll"),
                    tasks.create_task(self._reconcile_loop(), name="reconcile"),
                    tasks.create_task(watcher.run(), name="docker-watch"),
                    tasks.create_task(self._report_containers(), name="container-report"),
                ]
                await self._stop.wait()
                for worker in workers:
                    worker.cancel()
        finally:
            if dns is not None:
                await dns.close()
            await runner.cleanup()
            self.state.socket.unlink(missing_ok=True)
            self.state.pidfile.unlink(missing_ok=True)
            log.info("agent stopped")

    async def _start_dns(self) -> DnsServer | None:
        """Answer DNS on the mesh IP; containers' queries are redirected there by the firewall."""
        mesh_ip = str(self.cached.netmap.self_node.mesh_ip)
        upstreams = upstreams_from_resolv_conf(exclude=(mesh_ip,))
        dns = DnsServer(lambda: self.dns_table, upstreams)
        try:
            await dns.start([(mesh_ip, 53)])
        except ShoalError as exc:
            # Names are a feature, the mesh is the job: keep forwarding, say what is wrong.
            self.health.warn("dns", f"service discovery DNS not available: {exc}")
            return None
        return dns

    async def _follow_netmap(self) -> None:
        failures = 0
        while True:
            netmap = self.cached.netmap
            try:
                update = await self.client.poll(
                    since=netmap.revision, wait=self.config.poll_wait_seconds
                )
            except CredentialRejected as exc:
                self.health.warn("control", f"server rejected this node ({exc}); re-join")
                await asyncio.sleep(RETRY_SECONDS[-1])
                continue
            except (ControlUnreachable, ControlRejected) as exc:
                self.health.warn(
                    "control",
                    control_unreachable(str(exc), netmap.revision, self.cached.received_at),
                )
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                continue
            if failures:
                # The server may have restarted or withdrawn us: tell it our containers again.
                self._containers_changed.set()
            failures = 0
            self.health.clear("control")
            if update.kind == "none":
                continue
            newer = netmap.apply(update)
            self.dns_table = RecordTable.from_netmap(newer)
            self.cached = self.state.save_netmap(newer)
            log.info(
                "netmap r%d (%s): %d peers, %d containers",
                newer.revision,
                update.kind,
                len(newer.peers),
                len(newer.containers),
            )
            self._submit(newer)

    async def _on_containers(self, containers: list[ContainerReport]) -> None:
        self._containers = containers
        self._containers_changed.set()

    async def _report_containers(self) -> None:
        """Send the newest container set; latest wins, failures retry with the newest."""
        sent: list[ContainerReport] | None = None
        while True:
            await self._containers_changed.wait()
            self._containers_changed.clear()
            containers = self._containers if self._containers is not None else sent
            if containers is None:
                continue
            try:
                await self.client.report_containers(ContainersReport(containers=tuple(containers)))
            except (ControlUnreachable, ControlRejected) as exc:
                log.warning("container report failed (%s); retrying", exc)
                await asyncio.sleep(RETRY_SECONDS[0])
                self._containers_changed.set()
                continue
            sent = containers

    def _submit(self, netmap: NetworkMap) -> None:
        self.reconciler.submit(plan_host(netmap, self.private_key, self.config.listen_port))

    async def _reconcile_loop(self) -> None:
        while True:
            cfg = await self.reconciler.next_pending(self.config.resync_seconds)
            if cfg is None:
                # Periodic resync: converge from drift even when nothing arrives.
                cfg = plan_host(self.cached.netmap, self.private_key, self.config.listen_port)
            try:
                if await self.reconciler.apply(cfg):
                    log.info("host reconciled to netmap r%d", self.cached.netmap.revision)
                self.health.clear("reconcile")
            except Exception as exc:
                # Any adapter failure: keep what works, report it, retry on the next round.
                log.exception("reconcile failed")
                self.health.warn("reconcile", f"host configuration failed: {exc}")
                await asyncio.sleep(RETRY_SECONDS[-1])
                self.reconciler.submit(cfg)

    # -- the local API ---------------------------------------------------------------------

    async def status(self) -> AgentStatus:
        netmap = self.cached.netmap
        stats = {str(s.public_key): s for s in await self.dataplane.stats()}
        peers = []
        for node in netmap.peers:
            s = stats.get(str(node.public_key))
            peers.append(
                PeerStatus(
                    name=node.name,
                    public_key=node.public_key,
                    mesh_ip=node.mesh_ip,
                    subnet=node.subnet,
                    endpoint=(s.endpoint if s and s.endpoint else None)
                    or (str(node.endpoints[0]) if node.endpoints else None),
                    last_handshake=s.last_handshake if s else None,
                    rx_bytes=s.rx_bytes if s else 0,
                    tx_bytes=s.tx_bytes if s else 0,
                )
            )
        me = netmap.self_node
        return AgentStatus(
            state=self.health.state(),
            health=self.health.warnings(),
            name=me.name,
            node_id=me.id,
            server=self.identity.server_url,
            public_key=me.public_key,
            mesh_ip=me.mesh_ip,
            subnet=me.subnet,
            interface=INTERFACE,
            dataplane=self.dataplane.name,
            listen_port=self.config.listen_port,
            netmap_revision=netmap.revision,
            netmap_received_at=self.cached.received_at,
            peers=tuple(peers),
        )

    async def services(self) -> list[ServiceInfo]:
        netmap = self.cached.netmap
        nodes = (netmap.self_node, *netmap.peers)
        # Containers of silent hosts are already withdrawn from the netmap by the server.
        return build_catalog(
            netmap.containers, {n.id: n.name for n in nodes}, online=[n.id for n in nodes]
        )

    async def down(self, leave: bool) -> dict[str, Any]:
        self.health.stopping = True
        report = await self.reconciler.teardown()
        left = False
        if leave:
            left = await leave_mesh(self.identity, self.private_key)
            self.state.forget()
        self._stop.set()
        return {
            "interface_removed": report.interface_removed,
            "firewall_removed": report.firewall_removed,
            "network_removed": report.network.removed,
            "network_kept_for": list(report.network.attached),
            "left": left,
        }


async def leave_mesh(identity: NodeIdentity, private_key: PrivateKey) -> bool:
    try:
        async with ControlClient(
            identity.server_url, identity.ca_pem.encode(), node_key=private_key
        ) as client:
            await client.leave()
    except (ControlUnreachable, ControlRejected) as exc:
        log.warning("could not tell the server this node leaves: %s", exc)
        return False
    return True


async def start(config: AgentConfig) -> Agent:
    """Preflight, join or resume, and configure the host once; raise with nothing left behind."""
    if os.geteuid() != 0:
        raise NotRoot()
    state = StateDir(config.state_dir)
    state.ensure()
    docker = DockerHost(config.docker_host)
    await docker.ping()
    dataplane = await select_dataplane(state.path)
    private_key = state.private_key()

    identity = state.identity()
    cached = state.cached_netmap()
    fresh_join = identity is None or cached is None
    if identity is None or cached is None:
        identity, netmap = await _join(config, private_key, docker)
        cached = state.save_netmap(netmap)
        state.save_identity(identity)

    agent = Agent(config, state, identity, cached, private_key, dataplane, docker)
    cfg = plan_host(cached.netmap, private_key, config.listen_port)
    try:
        await agent.reconciler.apply(cfg)
    except BaseException:
        if fresh_join:
            # Nothing half-configured: undo this host's changes and the registration.
            log.error("first configuration failed; undoing it")
            await agent.reconciler.teardown()
            await leave_mesh(identity, private_key)
            state.forget()
        raise
    agent.health.configured = True
    return agent


async def _join(
    config: AgentConfig, private_key: PrivateKey, docker: DockerHost
) -> tuple[NodeIdentity, NetworkMap]:
    if not config.server_url or not config.token:
        raise NotJoined(
            f"this host has not joined a mesh (no identity in {config.state_dir}): "
            "pass --server URL --token TOKEN"
        )
    token = parse_join_token(config.token)
    ca_pem = await fetch_pinned_ca(config.server_url, token.fingerprint)
    advertise = config.advertise_addr or guess_advertise_addr()
    endpoints = (Endpoint(host=advertise, port=config.listen_port),) if advertise else ()
    name = config.name or os.uname().nodename.split(".")[0].lower()
    request = RegisterRequest(
        token=config.token,
        name=name,
        public_key=private_key.public_key(),
        endpoints=endpoints,
        host_prefixes=await occupied_prefixes(docker),
    )
    async with ControlClient(config.server_url, ca_pem, node_key=private_key) as client:
        response = await client.register(request)
    log.info(
        "joined %s as %s: mesh IP %s, subnet %s",
        config.server_url,
        name,
        response.netmap.self_node.mesh_ip,
        response.netmap.self_node.subnet,
    )
    identity = NodeIdentity(
        server_url=config.server_url,
        ca_pem=ca_pem.decode(),
        node_id=response.node_id,
        name=name,
    )
    return identity, response.netmap
