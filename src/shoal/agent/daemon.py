"""The agent daemon: preflight, join or resume, first apply, then follow the netmap.

    start()  checks (root, dockerd, WireGuard), joins or resumes, configures the host once;
             a failure here leaves nothing behind: a fresh join is undone on the server too.
    Agent.run()  owns its tasks: the netmap long-poll, the reconcile loop, the Docker watcher
             and the container reporter; beside them the local API.
    down_offline()  `shoal down` with no agent running: the same teardown, from the state dir.

This module is the composition root: it builds the real adapters and hands them to the
reconciler, which owns the loop and is the only place a netmap becomes host configuration.

SIGTERM stops the agent and leaves the host configured: the mesh keeps forwarding and a new
agent picks up without dropping a packet. Only the containers' DNS redirect goes with it (its
resolver dies with the agent; containers fall back to Docker's upstream until the next agent).
Only `shoal down` undoes the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from shoal.agent import exposure, tlscerts
from shoal.agent.adapters import host_adapters
from shoal.agent.catalogfeed import CatalogFeed
from shoal.agent.clock import Clock, SystemClock
from shoal.agent.config import MESH, AgentConfig, default_node_name
from shoal.agent.errors import NotJoined, NotRoot, RotationFailed, StateWriteFailed
from shoal.agent.facts import guess_advertise_addr, occupied_prefixes
from shoal.agent.health import (
    CA_EXPIRING,
    CONTAINERS_REJECTED,
    CONTROL_PROTOCOL,
    CONTROL_UNREACHABLE,
    NAME_NOT_PUBLISHABLE,
    NEEDS_JOIN,
    NETMAP_CACHE,
    STATE_FILE_RESET,
    Health,
    control_unreachable,
)
from shoal.agent.localapi import serve, serve_catalog
from shoal.agent.meshdns import MeshDns
from shoal.agent.metrics import AgentSnapshot, serve_metrics
from shoal.agent.paths import HANDSHAKE_FRESH_SECONDS, PathSelector
from shoal.agent.reconciler import Adapters, Reconciler, teardown_adapters
from shoal.agent.report import Reporter
from shoal.agent.statefiles import CachedNetmap, NodeIdentity, StateDir
from shoal.agent.stopwatch import Stopwatch
from shoal.agent.tcprelay import TcpRelayClient
from shoal.agent.traversal import Traversal
from shoal.controlclient.client import ControlClient
from shoal.controlclient.errors import (
    ControlError,
    ControlProtocolError,
    ControlRejected,
    ControlThrottled,
    ControlUnreachable,
    CredentialRejected,
)
from shoal.controlclient.tls import fetch_pinned_ca, ssl_context, trust_bundle
from shoal.dataplane import DataPlaneError, select_dataplane
from shoal.dockerhost import ContainerWatcher, DockerHost
from shoal.model.api import ContainerReport, ContainersReport, RegisterRequest, ServiceInfo
from shoal.model.certs import ContainerCertRequest, cert_owner, new_key_and_csr, wants_cert
from shoal.model.doctor import DoctorReport
from shoal.model.keys import PrivateKey
from shoal.model.netmap import (
    PEER_SWITCH_LAG,
    Container,
    Endpoint,
    MapUpdate,
    NetworkMap,
    Node,
    nat_kind,
)
from shoal.model.status import AgentStatus, DownReport, KeyRotation, PeerStatus
from shoal.model.tokens import parse_join_token
from shoal.plan.hostconfig import (
    DOCKER_NETWORK,
    INTERFACE,
    FirewallConfig,
    HostConfig,
    plan_host,
)
from shoal.plan.policy import refused_names

log = logging.getLogger("shoal.agent")

RETRY_SECONDS = (1.0, 2.0, 5.0)
TRUST_REFRESH_SECONDS = 6 * 3600.0  # and after every control outage (a server restart)
CA_WARNING = timedelta(days=30)
KEY_AGE_CHECK_SECONDS = 24 * 3600.0  # how often the key's age is held against its maximum


def rejoin_command(state_dir: Path, server_url: str) -> str:
    """What the operator runs when the server no longer accepts this node."""
    return (
        f"shoal down --leave --state-dir {state_dir} && "
        f"shoal up --server {server_url} --token-file FILE --state-dir {state_dir}"
    )


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        state: StateDir,
        identity: NodeIdentity,
        cached: CachedNetmap,
        private_key: PrivateKey,
        adapters: Adapters,
        docker: DockerHost | None,  # None: a host without Docker
        clock: Clock,
        next_key: PrivateKey | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.identity = identity
        self.cached = cached
        self.catalog = CatalogFeed(cached.netmap)
        self.private_key = private_key
        # The next key of a key rotation (private.key.next): the netmap says when to switch.
        self.next_key = next_key
        self._rotating = asyncio.Lock()  # one `rotate-key` at a time
        self._announced: KeyRotation | None = None  # until the netmap shows it
        self._rotation_changed = asyncio.Event()
        self.adapters = adapters
        self.docker = docker
        self.clock = clock
        self.health = Health(clock)
        self.reconciler = Reconciler(
            adapters, self._plan, self.health, clock, resync_seconds=config.resync_seconds
        )
        self.reconciler.offer(cached.netmap)
        self.client = ControlClient(
            identity.server_url, identity.ca_pem.encode(), node_key=private_key
        )
        self._containers: list[ContainerReport] | None = None  # newest set not yet reported
        self._containers_changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._trust_checked_at: float | None = None  # monotonic; None: not yet
        # Through the traversal, which knows the relays (the netmap) and the server's address.
        self.paths = PathSelector(tcp_local=lambda peer, ep: self.traversal.tcp_local(peer, ep))
        self.startup: Stopwatch | None = None  # the start-up's laps until `run` logs them
        self.traversal = Traversal(
            server_url=identity.server_url,
            listen_port=config.listen_port,
            local=lambda: _local_endpoint(config),
            node_key=lambda: self.private_key.public_key(),
            mac_key=self.client.mac_key,
            report=self._report_endpoints,
            relay=self.client.relay,
            relays=self.client.relays,
            netmap=lambda: self.cached.netmap,
            replan=lambda: self.reconciler.offer(self.cached.netmap),
            tunnel=adapters.tunnel,
            clock=clock,
            paths=self.paths,
            tcp_relay=TcpRelayClient(
                listen_port=config.listen_port,
                ssl_context=lambda: ssl_context(self.identity.ca_pem.encode()),
                private_key=lambda: self.private_key,
                server_mac_key=self.client.mac_key,
            ),
        )
        self.reporter = Reporter(
            self.status,
            lambda: {p.name: p.id for p in self.cached.netmap.peers},
            self.client.report,
            clock,
        )

    def keys(self) -> tuple[PrivateKey, ...]:
        """The private keys this host holds: current first, then the next one if rotating."""
        return (self.private_key,) if self.next_key is None else (self.private_key, self.next_key)

    def _plan(self, netmap: NetworkMap) -> HostConfig:
        self.paths.update(netmap.self_node, netmap.peers, None, self.clock.now().timestamp())
        return plan_host(
            netmap,
            self.keys(),
            self.config.listen_port,
            self.clock.now(),
            endpoints=self.paths.endpoints(),
        )

    async def _report_endpoints(self, endpoints: tuple[Endpoint, ...]) -> None:
        """Tell the server this node's endpoints: a registration again (no token needed)."""
        await self.client.register(
            RegisterRequest(
                name=self.identity.name,
                public_key=self.private_key.public_key(),
                endpoints=endpoints,
                host_prefixes=await occupied_prefixes(self.docker),
            )
        )

    async def configure(self, fresh_join: bool) -> None:
        """The first apply. If the host was never configured since its join (`fresh_join`,
        or a join whose first apply failed before: join.pending), a failure undoes this
        host's changes but keeps the registration and the state dir's identity: the join's
        token is spent, and the next `shoal up` resumes this node with its key, no token
        needed (`shoal down --leave` withdraws it instead)."""
        first = fresh_join or self.state.join_pending()
        try:
            await self.reconciler.first_apply()
        except BaseException:
            if first:
                log.error(
                    "first configuration failed; undoing it on this host. %s stays registered:"
                    " `shoal up --state-dir %s` resumes it (no token needed), `shoal down"
                    " --leave --state-dir %s` withdraws it",
                    self.identity.name,
                    self.state.path,
                    self.state.path,
                )
                await self.reconciler.teardown()
            raise
        if first:
            self.state.join_done()
        self.health.configured = True

    # -- the tasks -------------------------------------------------------------------------

    async def run(self, ready: Callable[[AgentStatus], None] | None = None) -> None:
        """Serve the local API and follow the netmap until stopped; `ready` is called with the
        status once `shoal status` can answer, before any task starts (how a starting
        `shoal up` learns it may return, and what it prints)."""
        # Metrics first: a port in use fails the start before anything else listens.
        metrics = await self._serve_metrics()
        runner = await serve(
            self.state.socket,
            self.status,
            self.down,
            self.services,
            doctor=self.doctor,
            rotate=self.rotate_key,
        )
        catalog = await serve_catalog(self.state.catalog_socket, self.catalog)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.state.pidfile.write_text(f"{os.getpid()}\n")
        log.info("agent running: %s", self.identity.name)
        if self.startup is not None:
            self.startup.lap("local-api")
            log.info("%s", self.startup)  # where a join's time goes (the join benchmark)
            self.startup = None
        if ready is not None:
            ready(await self.status())
        try:
            async with self.client, asyncio.TaskGroup() as tasks:
                workers = [
                    tasks.create_task(self.follow_netmap(), name="netmap-poll"),
                    tasks.create_task(self.reconciler.run(), name="reconcile"),
                    tasks.create_task(self.traversal.run(), name="nat-traversal"),
                    tasks.create_task(self.follow_rotation(), name="key-rotation"),
                    tasks.create_task(self._rotate_when_old(), name="key-age"),
                    tasks.create_task(self.reporter.run(), name="node-report"),
                ]
                if self.docker is not None:  # a host without Docker has no containers
                    watcher = ContainerWatcher(self.docker, DOCKER_NETWORK, self._on_containers)
                    workers += [
                        tasks.create_task(watcher.run(), name="docker-watch"),
                        tasks.create_task(self._report_containers(), name="container-report"),
                        tasks.create_task(self._container_certs(), name="tls-certs"),
                    ]
                await self._stop.wait()
                for worker in workers:
                    worker.cancel()
        finally:
            # After `shoal down` this does nothing; on SIGTERM it drops the DNS redirect.
            await self.reconciler.stop()
            await runner.cleanup()
            await catalog.cleanup()
            self.state.catalog_socket.unlink(missing_ok=True)
            if metrics is not None:
                await metrics.cleanup()
            self.state.socket.unlink(missing_ok=True)
            self.state.pidfile.unlink(missing_ok=True)
            log.info("agent stopped")

    async def follow_netmap(self) -> None:
        """Follow the server's netmap stream (a long-poll loop with a server that has none)
        and offer each new netmap; returns only when the server rejected this node
        (NEEDS_JOIN): asking again would not help.

        A stream the server ends, or that breaks after it delivered, is opened again at
        once from the newest revision, on the next replica if this one is gone (as a failed
        long-poll moves on within the call); only failing to open one backs off."""
        failures = 0
        streaming = True
        while True:
            delivered = False
            try:
                if streaming:
                    # Closed on leaving the loop (a trust change, an error in between), so
                    # the stream's connection goes back at once, not when collected.
                    async with contextlib.aclosing(
                        self.client.watch(
                            since=self.cached.netmap.revision, wait=self.config.poll_wait_seconds
                        )
                    ) as updates:
                        async for update in updates:
                            trusted = await self._received(update, failures)
                            failures, delivered = 0, True
                            if trusted:
                                break  # the client's new session ended this connection
                else:
                    update = await self.client.poll(
                        since=self.cached.netmap.revision, wait=self.config.poll_wait_seconds
                    )
                    await self._received(update, failures)
                    failures = 0
            except ControlThrottled as exc:
                # The server limits this host's address (failed authentications from it, a
                # neighbour behind the same NAT included): that passes, asking later helps.
                self.health.warn(
                    CONTROL_UNREACHABLE, f"the server is throttling this host: {exc}; retrying"
                )
                await self.clock.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
            except ControlRejected as exc:
                if streaming and exc.code == "not_found":
                    # A server from before netmap streams: its long-poll serves as well.
                    log.info("the server has no netmap stream (an older version): long-polling")
                    streaming = False
                    continue
                # 4xx: asking again will not help. Say what to do, and stop asking.
                self.health.clear(CONTROL_UNREACHABLE)
                self.health.warn(
                    NEEDS_JOIN,
                    f"the server rejected this node ({exc}); join again: "
                    + rejoin_command(self.state.path, self.identity.server_url),
                )
                log.error("server rejected this node: %s; not asking again", exc)
                return
            except (ControlUnreachable, ControlProtocolError) as exc:
                code = (
                    CONTROL_PROTOCOL
                    if isinstance(exc, ControlProtocolError)
                    else CONTROL_UNREACHABLE
                )
                if delivered and isinstance(exc, ControlUnreachable):
                    # A stream that delivered broke (its replica went away): reopen at once,
                    # as a long-poll is sent again after an answer; the open moves on to the
                    # next replica if this one stays unreachable. That one, or this one
                    # restarted, hears our containers again.
                    log.info("%s; opening it again", exc)
                    self._containers_changed.set()
                    continue
                self.health.warn(
                    code,
                    control_unreachable(
                        str(exc), self.cached.netmap.revision, self.cached.received_at
                    ),
                )
                await self.clock.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1

    async def _received(self, update: MapUpdate, failures: int) -> bool:
        """Take one update from the server, the first after `failures` failed attempts;
        whether the trust bundle changed (the client's connections were closed)."""
        if failures:
            # The server may have restarted or withdrawn us: tell it our containers again.
            self._containers_changed.set()
        trusted = False
        if failures or self._trust_due():
            trusted = await self.refresh_trust()
        self.health.clear(CONTROL_UNREACHABLE)
        self.health.clear(CONTROL_PROTOCOL)
        if update.kind == "none":
            return trusted
        netmap = self.cached.netmap
        newer = netmap.apply(update)
        self.remember(newer)
        log.info(
            "netmap r%d (%s): %d peers, %d containers",
            newer.revision,
            update.kind,
            len(newer.peers),
            len(newer.containers),
        )
        self.reconciler.offer(newer)
        return trusted

    def _trust_due(self) -> bool:
        checked = self._trust_checked_at
        return checked is None or self.clock.monotonic() - checked >= TRUST_REFRESH_SECONDS

    async def refresh_trust(self) -> bool:
        """Take the server's trust bundle (fetched over the channel the current one verifies):
        a CA being introduced is trusted before the server switches to it, so a CA rotation
        needs no host to join again. Warns when every trusted CA expires within 30 days.
        Whether the bundle changed (the client then closed its connections)."""
        self._trust_checked_at = self.clock.monotonic()
        try:
            bundle, expiries = trust_bundle(await self.client.trust_bundle())
        except (ControlError, ValueError) as exc:
            log.warning("could not refresh the trust bundle: %s", exc)
            return False
        changed = bundle.decode() != self.identity.ca_pem
        if changed:
            self.identity = replace(self.identity, ca_pem=bundle.decode())
            self.state.save_identity(self.identity)
            await self.client.set_trust(bundle)
            log.info("trust bundle updated: %d CA(s)", len(expiries))
        last = max(expiries)
        if last - self.clock.now() < CA_WARNING:
            self.health.warn(
                CA_EXPIRING,
                f"every CA this node trusts expires by {last:%Y-%m-%d}; rotate the CA on the "
                "server (shoal server rotate-ca)",
            )
        else:
            self.health.clear(CA_EXPIRING)
        return changed

    def remember(self, netmap: NetworkMap) -> None:
        """Keep `netmap` as the newest, and on disk for the next start if the disk lets us."""
        self.cached = CachedNetmap(netmap=netmap, received_at=self.clock.now())
        self.catalog.update(netmap)
        self._rotation_changed.set()
        try:
            self.state.save_netmap(self.cached)
        except StateWriteFailed as exc:
            # Degrade, don't die: the mesh follows the server; only a restart without the
            # server would start from the older file.
            self.health.warn(NETMAP_CACHE, f"{exc}; a restart would start from an older netmap")
            return
        self.health.clear(NETMAP_CACHE)

    # -- key rotation ----------------------------------------------------------------------

    async def rotate_key(self) -> KeyRotation:
        """`shoal node rotate-key`: announce a new key; this host and its peers switch to it
        at the time the server answers (the reconciler wakes then, see `plan_host`).

        The key is on disk (private.key.next) before the server hears of it, so a crash
        cannot leave the mesh expecting a key nobody holds. A refusal deletes it; when the
        server cannot be reached it is kept (the server may have recorded it) and the next
        attempt announces the same key again, which the server answers idempotently.
        """
        async with self._rotating:
            me = self.cached.netmap.self_node
            pending = self._own_rotation(me)
            if pending is not None:
                return pending
            new = self.next_key or PrivateKey.generate()
            try:
                self.state.save_next_private_key(new)
            except StateWriteFailed as exc:
                raise RotationFailed(f"{exc}; the key was not rotated") from exc
            try:
                reply = await self.client.rotate(new)
            except ControlRejected as exc:
                self.state.drop_next_private_key()
                self.next_key = None
                raise RotationFailed(f"the server refused the new key: {exc}") from exc
            except (ControlUnreachable, ControlProtocolError) as exc:
                self.next_key = new  # the server may have recorded it: be ready to switch
                self._rotation_changed.set()
                raise RotationFailed(
                    f"{exc}; if the server recorded the new key this host switches anyway, "
                    "else run shoal node rotate-key again"
                ) from exc
            self.next_key = new
            self._announced = KeyRotation(next_key=reply.new_public_key, switch_at=reply.switch_at)
            self._rotation_changed.set()
            log.info(
                "key rotation announced: %s => %s at %s",
                self.private_key.public_key().short(),
                new.public_key().short(),
                reply.switch_at.isoformat(),
            )
            return self._announced

    def _announcement(self) -> KeyRotation | None:
        """The rotation this agent announced, while it holds its key and the netmap does not
        show it yet."""
        held = self.next_key
        announced = self._announced
        if held is None or announced is None or announced.next_key != held.public_key():
            return None
        return announced

    def _own_rotation(self, me: Node) -> KeyRotation | None:
        """The rotation of this host the netmap announces, if this host holds its key."""
        if self.next_key is None or me.next_key is None or me.switch_at is None:
            return None
        if me.next_key != self.next_key.public_key():
            return None
        return KeyRotation(next_key=me.next_key, switch_at=me.switch_at)

    async def follow_rotation(self) -> None:
        """Promote private.key.next to private.key once the netmap says this host carries
        traffic with it (at the switch, or on a final record received later), and sign the
        server calls with it from then on."""
        while True:
            self._rotation_changed.clear()
            timeout = KEY_AGE_CHECK_SECONDS
            if self.next_key is not None:
                me = self.cached.netmap.self_node
                if me.key_at(self.clock.now()) == self.next_key.public_key():
                    self._promote()
                    continue
                switch = me.switches_at()
                if switch is not None and me.next_key == self.next_key.public_key():
                    timeout = max(0.0, (switch - self.clock.now()).total_seconds())
            await self.clock.wait(self._rotation_changed, timeout)

    def _promote(self) -> None:
        assert self.next_key is not None
        try:
            self.state.promote_next_private_key()
        except StateWriteFailed as exc:
            # The host switched anyway (the plan holds both keys); a restart loads both.
            log.error("%s; still signing with the new key", exc)
        old, self.private_key, self.next_key = self.private_key, self.next_key, None
        self.client.use_key(self.private_key)
        log.info(
            "key rotation: now %s (was %s)",
            self.private_key.public_key().short(),
            old.public_key().short(),
        )

    async def _rotate_when_old(self) -> None:
        """Automatic rotation: once private.key is older than the configured maximum."""
        max_age = self.config.key_max_age_seconds
        if max_age is None:
            return
        while True:
            age = self.state.key_age(self.clock.now())
            if age >= max_age and self.next_key is None:
                log.info("private.key is %.0f days old: rotating it", age / 86400)
                try:
                    await self.rotate_key()
                except RotationFailed as exc:
                    log.warning("automatic key rotation failed: %s", exc)
            await self.clock.sleep(KEY_AGE_CHECK_SECONDS)

    async def _on_containers(self, containers: list[ContainerReport]) -> None:
        self._containers = containers
        self._containers_changed.set()
        # A container restarted with its address kept is behind a new bridge port: the
        # netmap does not change, the firewall's anti-spoofing bindings must. Only the
        # netmap's local containers are ever bound: with none in the applied firewall the
        # bindings are empty whatever the ports, and a recheck would only read the tables
        # again (two `nft list` and an `iptables-save`, ~0.1 s of CPU in a fresh join, while
        # the user's first `docker run` competes for it). A container the netmap adds later
        # changes the firewall's part, which is applied with the ports read then.
        applied = self.reconciler.applied("firewall")
        if not isinstance(applied, FirewallConfig) or applied.local_containers:
            self.reconciler.recheck("firewall")

    async def _container_certs(self) -> None:
        """Certificates for this host's containers labelled shoal.tls=true (`tlscerts`):
        looked at each new netmap (a container appears in it once the server has it, and
        only then may it be named) and every TLS_CHECK_SECONDS for renewals; a failure is
        retried at the next look."""
        seen_rev, checked_at = -1, float("-inf")
        while True:
            netmap = self.cached.netmap
            if (
                netmap.revision != seen_rev
                or self.clock.monotonic() - checked_at >= TLS_CHECK_SECONDS
            ):
                seen_rev, checked_at = netmap.revision, self.clock.monotonic()
                for container in netmap.containers:
                    if container.node_id == netmap.self_node.id and wants_cert(container):
                        await self._certify(container)
            await self.clock.sleep(TLS_LOOK_SECONDS)

    async def _certify(self, container: Container) -> None:
        directory = tlscerts.cert_dir(self.state.path, container.name)
        if not tlscerts.due(directory, self.clock.now()):
            return
        key_pem, csr = new_key_and_csr(container.name)
        try:
            issued = await self.client.container_cert(
                ContainerCertRequest(container_id=container.id, csr=csr)
            )
        except (ControlUnreachable, ControlRejected, ControlProtocolError) as exc:
            log.warning("certificate for container %s: %s", container.name, exc)
            return
        try:
            owner = cert_owner(container)
        except ValueError as exc:  # the operator's label: written root-only, as by default
            log.warning("certificate for container %s: %s", container.name, exc)
            owner = None
        tlscerts.write_bundle(directory, key_pem, issued, owner)
        log.info(
            "certificate for container %s (%s) in %s, valid until %s",
            container.name,
            ", ".join(issued.names),
            directory,
            f"{issued.not_after:%Y-%m-%d %H:%M} UTC",
        )

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
            except CredentialRejected:
                continue  # the netmap poll says so, as NEEDS_JOIN
            except ControlThrottled as exc:
                # More changes than the server takes from one node (a burst of container
                # starts): the newest set goes once it takes them again. Dropped, the burst's
                # last containers stayed unknown to the mesh until the next change (the DNS
                # benchmark's 14th name never resolved).
                log.info("container report throttled (%s); sending the newest again", exc)
                await self.clock.sleep(RETRY_SECONDS[0])
                self._containers_changed.set()
                continue
            except ControlRejected as exc:
                # The same report would be refused again: wait for the next change.
                self.health.warn(CONTAINERS_REJECTED, f"server refused the container list: {exc}")
                continue
            except (ControlUnreachable, ControlProtocolError) as exc:
                log.warning("container report failed (%s); retrying", exc)
                await self.clock.sleep(RETRY_SECONDS[0])
                self._containers_changed.set()
                continue
            self.health.clear(CONTAINERS_REJECTED)
            sent = containers

    # -- the local API ---------------------------------------------------------------------

    def _host_checks(self, netmap: NetworkMap) -> None:
        """Warnings that are facts of this host, checked when `shoal status` asks: the Docker
        API or Swarm listening beyond loopback, host services the enforced policy opens to
        the mesh, names the policy does not let it publish."""
        firewall = self.reconciler.applied("firewall")
        found = exposure.check(firewall.policy if isinstance(firewall, FirewallConfig) else None)
        for code in exposure.CODES:
            if code in found:
                self.health.warn(code, found[code])
            else:
                self.health.clear(code)
        me, policy = netmap.self_node, netmap.policy
        refused = sorted(
            f"{c.name} ({', '.join(names)})"
            for c in netmap.containers
            if c.node_id == me.id
            and policy is not None
            and (names := refused_names(policy, me.tags, c))
        )
        if refused and policy is not None:
            self.health.warn(
                NAME_NOT_PUBLISHABLE,
                f"policy {policy.file} r{policy.revision} does not let this host (tags "
                f"{', '.join(me.tags) or 'none'}) publish: {'; '.join(refused)}; reported but "
                "not in DNS",
            )
        else:
            self.health.clear(NAME_NOT_PUBLISHABLE)

    async def status(self) -> AgentStatus:
        netmap = self.cached.netmap
        self._host_checks(netmap)
        firewall = self.reconciler.applied("firewall")
        policy = firewall.policy if isinstance(firewall, FirewallConfig) else None
        try:
            live = await self.adapters.tunnel.stats()
        except DataPlaneError:
            live = []  # no interface (being recreated): the health warnings say why
        stats = {str(s.public_key): s for s in live}
        now = self.clock.now()
        peers = []
        for node in netmap.peers:
            key = node.key_at(now, lag=PEER_SWITCH_LAG)
            s = stats.get(str(key))
            fresh = (
                s is not None
                and s.last_handshake is not None
                and ((now - s.last_handshake).total_seconds() < HANDSHAKE_FRESH_SECONDS)
            )
            route = self.traversal.route(node.public_key, s.endpoint if s else None, fresh)
            peers.append(
                PeerStatus(
                    name=node.name,
                    public_key=key,
                    mesh_ip=node.mesh_ip,
                    subnet=node.subnet,
                    endpoint=route.endpoint or (str(node.endpoints[0]) if node.endpoints else None),
                    path=self.paths.path(node.public_key).description,
                    via=route.via,
                    relay=route.relay,
                    why=route.why,
                    nat=nat_kind(node.endpoints),
                    last_handshake=s.last_handshake if s else None,
                    rx_bytes=s.rx_bytes if s else 0,
                    tx_bytes=s.tx_bytes if s else 0,
                    rotation=_rotation(node),
                )
            )
        me = netmap.self_node
        return AgentStatus(
            state=self.health.state(),
            health=self.health.warnings(),
            name=me.name,
            node_id=me.id,
            server=self.identity.server_url,
            public_key=me.key_at(now),
            mesh_ip=me.mesh_ip,
            subnet=me.subnet,
            interface=INTERFACE,
            dataplane=self.adapters.tunnel.name,
            listen_port=self.config.listen_port,
            nat=self.traversal.nat,
            netmap_revision=netmap.revision,
            netmap_received_at=self.cached.received_at,
            policy_revision=None if policy is None else policy.revision,
            peers=tuple(peers),
            rotation=_rotation(me) or self._announcement(),
        )

    async def services(self) -> list[ServiceInfo]:
        return list(self.catalog.catalog.services)

    async def _serve_metrics(self) -> web.AppRunner | None:
        if self.config.metrics_listen is None:
            return None
        host, port = self.config.metrics_listen
        if host == MESH:
            host = str(self.cached.netmap.self_node.mesh_ip)
        runner = await serve_metrics(host, port, self.metrics)
        log.info("metrics on http://%s:%d/metrics", host, port)
        return runner

    async def metrics(self) -> AgentSnapshot:
        dns = self.adapters.dns
        return AgentSnapshot(
            status=await self.status(),
            subsystems=self.reconciler.subsystems(),
            dns=dns.stats if isinstance(dns, MeshDns) else None,
            now=self.clock.now(),
        )

    async def doctor(self, target: str | None) -> DoctorReport:
        """`shoal doctor [TARGET]`: the checks of `shoal.agent.doctor` on this host."""
        # Imported here: the checks and their probes are ~12 ms of CPU that every start of
        # the agent paid (a join and a restart wait for its imports), for a command rarely run.
        from shoal.agent.doctor_probe import diagnose

        return await diagnose(self, target)

    async def down(self, leave: bool) -> DownReport:
        """`shoal down`: remove everything from the host, optionally leave, then exit."""
        self.health.stopping = True
        subsystems = await self.reconciler.teardown()
        left: bool | None = None
        if leave:
            left = await leave_mesh(self.identity, self.private_key)
            self.state.forget()
        self._stop.set()
        return DownReport(subsystems=subsystems, left=left)


def _rotation(node: Node) -> KeyRotation | None:
    if node.next_key is None or node.switch_at is None:
        return None
    return KeyRotation(next_key=node.next_key, switch_at=node.switch_at)


async def leave_mesh(identity: NodeIdentity, private_key: PrivateKey) -> bool:
    try:
        async with ControlClient(
            identity.server_url, identity.ca_pem.encode(), node_key=private_key
        ) as client:
            await client.leave()
    except CredentialRejected as exc:
        # Removed by an operator (the way NEEDS_JOIN's own recovery command starts): the
        # node is off the mesh already, which is what leaving asks for.
        log.info("the server no longer knows this node, nothing to leave: %s", exc)
        return True
    except (ControlUnreachable, ControlRejected, ControlProtocolError) as exc:
        log.warning("could not tell the server this node leaves: %s", exc)
        return False
    return True


async def down_offline(config: AgentConfig, leave: bool) -> DownReport:
    """`shoal down` with no agent running: the agent's own teardown, from the state dir.

    A state dir no node was joined with undoes nothing (no subsystems in the report): the
    interface and rules on this host, if any, belong to an agent started with another
    --state-dir, and a typo must not take its mesh down."""
    state = StateDir(config.state_dir)
    if not state.holds_node():
        return DownReport(subsystems=(), left=None)
    cached = state.cached_netmap()
    docker = None if _without_docker(config, cached) else DockerHost(config.docker_host)
    adapters = host_adapters(await select_dataplane(state.path), docker)
    subsystems = await teardown_adapters(adapters)
    left: bool | None = None
    if leave:
        identity = state.identity()
        left = identity is not None and await leave_mesh(identity, state.private_key())
        state.forget()
    return DownReport(subsystems=subsystems, left=left)


async def _fetch_netmap(identity: NodeIdentity, private_key: PrivateKey) -> NetworkMap:
    """The full netmap from the server, for a node whose cached one was lost."""
    async with ControlClient(
        identity.server_url, identity.ca_pem.encode(), node_key=private_key
    ) as client:
        update = await client.poll(since=0, wait=0)
    if update.full is None:
        raise ControlProtocolError(f"server at {identity.server_url} sent no full netmap")
    return update.full


async def start(
    config: AgentConfig,
    clock: Clock | None = None,
    watch: Stopwatch | None = None,
    state: StateDir | None = None,
    dns: MeshDns | None = None,
) -> Agent:
    """Preflight, join or resume, and configure the host once; raise with nothing left behind.

    `watch` times the start-up; a caller that timed what came before passes its own (a forked
    agent: the `shoal up` process before the fork), and the time since is the lap `imports`.
    The line is logged once the agent is ready (`Agent.run`). `dns`: the resolver, already
    answering from the cached netmap in `state` (`answer_from_cache`)."""
    clock = clock or SystemClock()
    if watch is None:
        watch = Stopwatch()
    else:
        watch.lap("imports")
    if os.geteuid() != 0:
        raise NotRoot()
    state = state or StateDir(config.state_dir)
    state.ensure()
    identity = state.identity()
    cached = state.cached_netmap()
    docker = None if _without_docker(config, cached) else DockerHost(config.docker_host)
    dataplane = await select_dataplane(state.path)
    watch.lap("dataplane")
    private_key = state.private_key()
    watch.lap("key")

    fresh_join = identity is None
    if identity is None:
        if docker is not None:  # before registering: the join reports the Docker subnets
            await docker.ping()
            watch.lap("docker")
        identity, cached = await _join_and_save(config, state, private_key, docker, clock, watch)
    elif config.advertise_routes is not None:
        cached = await _advertise_again(config, state, identity, private_key, clock)
    elif cached is None:
        # The cached netmap was lost or set aside: the server has the current one.
        cached = CachedNetmap(
            netmap=await _fetch_netmap(identity, private_key), received_at=clock.now()
        )
        state.save_netmap(cached)

    agent = Agent(
        config,
        state,
        identity,
        cached,
        private_key,
        host_adapters(dataplane, docker, dns),
        docker,
        clock,
        next_key=state.next_private_key(),
    )
    if state.set_aside:
        agent.health.warn(STATE_FILE_RESET, "; ".join(state.set_aside) + "; rebuilt")
    watch.lap("state")
    if not fresh_join:
        # Resuming, names first (see `answer_from_cache`; a no-op when it answers already):
        # before the slower subsystems and before Docker is asked (benchmarks/recovery.py).
        # Not for a join never configured: no container uses these names yet, and a failure
        # before `configure` would leave the redirect with nothing to undo it.
        if not state.join_pending():
            await agent.reconciler.apply_early(("dns",))
            watch.lap("dns")
        if docker is not None:
            await docker.ping()
            watch.lap("docker")
    await agent.configure(fresh_join)
    watch.lap("first-apply")
    agent.startup = watch
    return agent


async def _advertise_again(
    config: AgentConfig,
    state: StateDir,
    identity: NodeIdentity,
    private_key: PrivateKey,
    clock: Clock,
) -> CachedNetmap:
    """A joined host resumed with `--advertise-routes`: register again (no token: the key is
    the identity) with the new set, keeping the endpoints the server knows; the reply's
    netmap becomes the cached one."""
    assert config.advertise_routes is not None, "only called with routes to advertise"
    async with ControlClient(
        identity.server_url, identity.ca_pem.encode(), node_key=private_key
    ) as client:
        known = (await client.poll(since=0, wait=0)).full
        endpoints = known.self_node.endpoints if known is not None else ()
        reply = await client.register(
            RegisterRequest(
                name=identity.name,
                public_key=private_key.public_key(),
                endpoints=endpoints,
                advertise_routes=config.advertise_routes,
            )
        )
    log.info("advertising routes %s", ", ".join(map(str, config.advertise_routes)) or "(none)")
    cached = CachedNetmap(netmap=reply.netmap, received_at=clock.now())
    state.save_netmap(cached)
    return cached


# Certificates: a new netmap is looked for this often, renewals every TLS_CHECK_SECONDS.
TLS_LOOK_SECONDS = 1.0
TLS_CHECK_SECONDS = 60.0


def _without_docker(config: AgentConfig, cached: CachedNetmap | None) -> bool:
    """A host without Docker: asked to be (`--no-docker`), or joined as one (its netmap
    gives it no container subnet; a later `shoal up` without the flag resumes it as such)."""
    return config.no_docker or (cached is not None and cached.netmap.self_node.subnet is None)


def _local_endpoint(config: AgentConfig) -> Endpoint | None:
    """This host's own address (advertised or guessed) and WireGuard port."""
    advertise = config.advertise_addr or guess_advertise_addr()
    return Endpoint(host=advertise, port=config.listen_port) if advertise else None


async def join(config: AgentConfig, clock: Clock | None = None) -> None:
    """Join the mesh and keep the identity and netmap in the state dir, configuring nothing
    on the host: an agent started later (the systemd unit) resumes from there, so the join
    token stays in this process. Does nothing when the state dir already holds an identity."""
    if os.geteuid() != 0:
        raise NotRoot()
    state = StateDir(config.state_dir)
    state.ensure()
    identity = state.identity()
    if identity is not None:
        if config.advertise_routes is not None:
            await _advertise_again(
                config, state, identity, state.private_key(), clock or SystemClock()
            )
        return
    docker = None if config.no_docker else DockerHost(config.docker_host)
    if docker is not None:
        await docker.ping()
    await _join_and_save(
        config, state, state.private_key(), docker, clock or SystemClock(), Stopwatch()
    )


async def _join_and_save(
    config: AgentConfig,
    state: StateDir,
    private_key: PrivateKey,
    docker: DockerHost | None,
    clock: Clock,
    watch: Stopwatch,
) -> tuple[NodeIdentity, CachedNetmap]:
    identity, netmap = await _join(config, private_key, docker, watch)
    cached = CachedNetmap(netmap=netmap, received_at=clock.now())
    state.save_netmap(cached)
    state.mark_join_pending()  # until the first apply: see `Agent.configure`
    state.save_identity(identity)
    return identity, cached


async def _join(
    config: AgentConfig, private_key: PrivateKey, docker: DockerHost | None, watch: Stopwatch
) -> tuple[NodeIdentity, NetworkMap]:
    if not config.server_url or not config.token:
        raise NotJoined(
            f"this host has not joined a mesh (no identity in {config.state_dir}): "
            "pass --server URL --token TOKEN"
        )
    token = parse_join_token(config.token)
    ca_pem = await fetch_pinned_ca(config.server_url, token.fingerprint)
    watch.lap("ca")
    local = _local_endpoint(config)
    endpoints = (local,) if local else ()
    name = config.name or default_node_name()
    request = RegisterRequest(
        token=config.token,
        name=name,
        public_key=private_key.public_key(),
        endpoints=endpoints,
        host_prefixes=await occupied_prefixes(docker),
        advertise_routes=config.advertise_routes,
        container_subnet=docker is not None,
    )
    watch.lap("facts")
    async with ControlClient(config.server_url, ca_pem, node_key=private_key) as client:
        response = await client.register(request)
    watch.lap("register")
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
