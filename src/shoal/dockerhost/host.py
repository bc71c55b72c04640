"""The one module that talks to the Docker API: shoal's bridge network, the subnets in use and
the containers attached to it.

The Docker SDK is synchronous; every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import IPAMConfig, IPAMPool

from shoal.dockerhost.containers import (
    Inspected,
    health_hint,
    hint_of,
    make_report,
    report_from_inspect,
)
from shoal.dockerhost.errors import DockerError, DockerUnavailable, NetworkInUse
from shoal.model.api import ContainerReport
from shoal.plan.hostconfig import DockerNetworkConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

# What the SDK raises: APIError (the daemon refused), other DockerException (no daemon, bad
# URL), requests' errors and OSError (the socket).
FOREIGN_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)

LABEL = "io.shoal.managed"
DEFAULT_URL = "unix:///var/run/docker.sock"
OPT_BRIDGE = "com.docker.network.bridge.name"
OPT_MTU = "com.docker.network.driver.mtu"
OPT_MASQ = "com.docker.network.bridge.enable_ip_masquerade"


@dataclass(frozen=True, slots=True)
class RemoveResult:
    removed: bool
    attached: tuple[str, ...] = ()  # names of the containers that kept the network in place


def _options(cfg: DockerNetworkConfig) -> dict[str, str]:
    # Masquerading off: shoal's own firewall NATs only traffic leaving the mesh.
    return {OPT_BRIDGE: cfg.bridge, OPT_MTU: str(cfg.mtu), OPT_MASQ: "false"}


def _describe(attrs: dict[str, Any]) -> str:
    cfgs = (attrs.get("IPAM") or {}).get("Config") or [{}]
    opts = attrs.get("Options") or {}
    return (
        f"subnet {cfgs[0].get('Subnet')} gateway {cfgs[0].get('Gateway')} "
        f"bridge {opts.get(OPT_BRIDGE)} mtu {opts.get(OPT_MTU)} masquerade {opts.get(OPT_MASQ)}"
    )


def _matches(attrs: dict[str, Any], cfg: DockerNetworkConfig) -> bool:
    cfgs = (attrs.get("IPAM") or {}).get("Config") or []
    opts = attrs.get("Options") or {}
    return (
        attrs.get("Driver") == "bridge"
        and len(cfgs) == 1
        and cfgs[0].get("Subnet") == str(cfg.subnet)
        and cfgs[0].get("Gateway") == str(cfg.gateway)
        and all(opts.get(k) == v for k, v in _options(cfg).items())
    )


def _attached(attrs: dict[str, Any]) -> tuple[str, ...]:
    return tuple(
        sorted(c.get("Name", cid[:12]) for cid, c in (attrs.get("Containers") or {}).items())
    )


class DockerHost:
    """One dockerd, at `base_url` (None: DOCKER_HOST or the default socket)."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url
        self._client: Any = None
        # Inspect results of running containers, by id, with the summary's health hint they
        # were taken under: a container is inspected again only when its health changed.
        self._inspected: dict[str, tuple[str, Inspected]] = {}

    @property
    def url(self) -> str:
        return self.base_url or DEFAULT_URL

    def _docker(self) -> Any:
        if self._client is None:
            if self.base_url is None:
                self._client = docker.from_env(timeout=30)
            else:
                self._client = docker.DockerClient(base_url=self.base_url, timeout=30)
        return self._client

    def new_api_client(self) -> Any:
        """A separate low-level client (for a long-lived stream), same daemon and API version.
        Runs blocking I/O: call it from a worker thread."""
        version = self._docker().api.api_version
        if self.base_url is None:
            kwargs = docker.utils.kwargs_from_env()
            return docker.APIClient(version=version, timeout=30, **kwargs)
        return docker.APIClient(base_url=self.base_url, version=version, timeout=30)

    async def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        def run() -> T:
            return fn(self._docker())

        try:
            return await asyncio.to_thread(run)
        except FOREIGN_ERRORS as exc:
            raise self.translate(what, exc) from exc

    def translate(self, what: str, exc: BaseException) -> DockerError:
        """The shoal error for an exception of the Docker SDK (or the socket under it)."""
        if isinstance(exc, docker.errors.APIError):
            return DockerError(f"{what}: {exc.explanation or exc}")
        return DockerUnavailable(self.url, str(exc))

    async def ping(self) -> None:
        """Raise DockerUnavailable unless dockerd answers."""
        await self._call("ping", lambda c: c.ping())

    async def container_pid(self, container_id: str) -> int | None:
        """The host PID of a running container's main process; None when it is not running
        (or gone)."""

        def pid(client: Any) -> int | None:
            try:
                state = client.api.inspect_container(container_id)["State"]
            except docker.errors.NotFound:
                return None
            value = int(state.get("Pid") or 0)
            return value if state.get("Running") and value > 0 else None

        return await self._call(f"inspect container {container_id[:12]}", pid)

    async def _inspect(self, name: str) -> dict[str, Any] | None:
        def find(client: Any) -> dict[str, Any] | None:
            for net in client.networks.list(names=[name]):
                if net.name == name:  # the filter matches substrings
                    net.reload()  # the list omits attached containers
                    attrs: dict[str, Any] = net.attrs
                    return attrs
            return None

        return await self._call(f"inspect network {name}", find)

    async def ensure_network(self, cfg: DockerNetworkConfig) -> bool:
        """Create the bridge network `cfg.name` as configured; recreate it when it differs
        and nothing is attached (NetworkInUse otherwise). False when it already matched."""
        attrs = await self._inspect(cfg.name)
        if attrs is not None:
            if _matches(attrs, cfg):
                return False
            attached = _attached(attrs)
            if attached:
                raise NetworkInUse(
                    cfg.name,
                    f"has {_describe(attrs)}; shoal needs subnet {cfg.subnet}",
                    attached,
                )
            await self._call(
                f"remove network {cfg.name}", lambda c: c.api.remove_network(attrs["Id"])
            )
            log.info("docker network %s: %s => recreating", cfg.name, _describe(attrs))

        def create(client: Any) -> None:
            ipam = IPAMConfig(
                pool_configs=[IPAMPool(subnet=str(cfg.subnet), gateway=str(cfg.gateway))]
            )
            client.networks.create(
                cfg.name,
                driver="bridge",
                ipam=ipam,
                options=_options(cfg),
                labels={LABEL: "1"},
                check_duplicate=True,
            )

        await self._call(f"create network {cfg.name}", create)
        log.info(
            "docker network %s: created (subnet %s, gateway %s, bridge %s, mtu %s)",
            cfg.name, cfg.subnet, cfg.gateway, cfg.bridge, cfg.mtu,
        )  # fmt: skip
        return True

    async def network_drift(self, cfg: DockerNetworkConfig) -> str | None:
        """How network `cfg.name` differs from `cfg` ("missing", or what it has); None when it
        matches. Read only (`shoal doctor`)."""
        attrs = await self._inspect(cfg.name)
        if attrs is None:
            return "missing"
        return None if _matches(attrs, cfg) else f"has {_describe(attrs)}"

    async def remove_network(self, name: str) -> RemoveResult:
        """Remove network `name` unless containers are attached (then say which)."""
        attrs = await self._inspect(name)
        if attrs is None:
            return RemoveResult(removed=False)
        attached = _attached(attrs)
        if attached:
            log.info("docker network %s: kept, containers attached: %s", name, ", ".join(attached))
            return RemoveResult(removed=False, attached=attached)
        await self._call(f"remove network {name}", lambda c: c.api.remove_network(attrs["Id"]))
        log.info("docker network %s: removed", name)
        return RemoveResult(removed=True)

    async def network_subnets(self, exclude: Sequence[str] = ()) -> list[IPv4Network]:
        """IPv4 subnets of every Docker network except those named in `exclude` (sorted)."""

        def subnets(client: Any) -> list[IPv4Network]:
            found: set[IPv4Network] = set()
            for net in client.networks.list():
                if net.name in exclude:
                    continue
                for pool in (net.attrs.get("IPAM") or {}).get("Config") or []:
                    subnet = ip_network(pool.get("Subnet") or "::/0", strict=False)
                    if isinstance(subnet, IPv4Network):
                        found.add(subnet)
            return sorted(found)

        return await self._call("list networks", subnets)

    async def shoal_containers(
        self, network: str = "shoal", fresh: Collection[str] = ()
    ) -> list[ContainerReport]:
        """Every running container attached to `network` that has an IPv4 there, sorted by id.

        One list call, plus an inspect of each container that is new, whose health changed
        since the last call, or whose id is in `fresh` (containers an event just named: the
        list can lag behind their events, an inspect cannot). A few ms for tens of containers."""
        return await self._call(
            f"list containers on {network}", lambda c: self._reports(c.api, network, fresh)
        )

    def _reports(self, api: Any, network: str, fresh: Collection[str]) -> list[ContainerReport]:
        summaries = api.containers(filters={"network": [network], "status": ["running"]})
        listed = {s["Id"] for s in summaries}
        cache: dict[str, tuple[str, Inspected]] = {}
        reports: list[ContainerReport] = []

        def inspect(cid: str) -> ContainerReport | None:
            try:
                attrs = api.inspect_container(cid)
            except docker.errors.NotFound:
                return None  # gone meanwhile
            report = report_from_inspect(attrs, network)
            if report is not None:
                cache[cid] = (hint_of(report.health), Inspected(report.ports, report.health))
            return report

        for summary in summaries:
            cid: str = summary["Id"]
            hint = health_hint(summary.get("Status") or "")
            cached = self._inspected.get(cid)
            if cid in fresh:
                report = inspect(cid)
            elif cached is not None and cached[0] == hint:
                cache[cid] = cached
                report = make_report(summary, cached[1], network)
            else:
                report = inspect(cid)
            if report is not None:
                reports.append(report)
        for cid in fresh:
            if cid not in listed and (report := inspect(cid)) is not None:
                reports.append(report)
        self._inspected = cache  # forget containers no longer running there
        return sorted(reports, key=lambda r: r.id)
