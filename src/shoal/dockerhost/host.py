"""Shoal's bridge network, the subnets in use and the containers attached to it, over the
Docker Engine API (`engine.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from typing import Any

from shoal.dockerhost.containers import (
    Inspected,
    health_hint,
    hint_of,
    make_report,
    report_from_inspect,
)
from shoal.dockerhost.engine import Engine, Session, filters_arg, path_arg
from shoal.dockerhost.errors import NetworkInUse
from shoal.model.api import ContainerReport
from shoal.plan.hostconfig import DockerNetworkConfig

log = logging.getLogger(__name__)

LABEL = "io.shoal.managed"
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
    """One dockerd, at `base_url` (None: DOCKER_HOST or the default socket); DockerError for
    a URL of another kind. Every method raises DockerUnavailable when dockerd does not answer
    and DockerError when it refuses."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url
        self.engine = Engine(base_url)
        # Inspect results of running containers, by id, with the summary's health hint they
        # were taken under: a container is inspected again only when its health changed.
        self._inspected: dict[str, tuple[str, Inspected]] = {}

    @property
    def url(self) -> str:
        return self.engine.url

    async def ping(self) -> None:
        """Raise DockerUnavailable unless dockerd answers."""
        async with self.engine.session() as api:
            await api.ping()

    async def container_pid(self, container_id: str) -> int | None:
        """The host PID of a running container's main process; None when it is not running
        (or gone)."""
        async with self.engine.session() as api:
            attrs = await api.find(
                f"inspect container {container_id[:12]}",
                f"/containers/{path_arg(container_id)}/json",
            )
        if attrs is None:
            return None
        state = attrs.get("State") or {}
        value = int(state.get("Pid") or 0)
        return value if state.get("Running") and value > 0 else None

    async def _inspect(self, api: Session, name: str) -> dict[str, Any] | None:
        attrs: dict[str, Any] | None = await api.find(
            f"inspect network {name}", f"/networks/{path_arg(name)}"
        )
        # The daemon also takes an id prefix for a name: only the network of that name counts.
        return attrs if attrs is not None and attrs.get("Name") == name else None

    async def ensure_network(self, cfg: DockerNetworkConfig) -> bool:
        """Create the bridge network `cfg.name` as configured; recreate it when it differs
        and nothing is attached (NetworkInUse otherwise). False when it already matched."""
        async with self.engine.session() as api:
            attrs = await self._inspect(api, cfg.name)
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
                await api.delete(f"remove network {cfg.name}", f"/networks/{path_arg(attrs['Id'])}")
                log.info("docker network %s: %s => recreating", cfg.name, _describe(attrs))
            await api.post(
                f"create network {cfg.name}",
                "/networks/create",
                {
                    "Name": cfg.name,
                    "Driver": "bridge",
                    "IPAM": {
                        "Driver": "default",
                        "Config": [{"Subnet": str(cfg.subnet), "Gateway": str(cfg.gateway)}],
                    },
                    "Options": _options(cfg),
                    "Labels": {LABEL: "1"},
                    # Before API 1.44 a second network of the same name is created otherwise.
                    "CheckDuplicate": True,
                },
            )
        log.info(
            "docker network %s: created (subnet %s, gateway %s, bridge %s, mtu %s)",
            cfg.name, cfg.subnet, cfg.gateway, cfg.bridge, cfg.mtu,
        )  # fmt: skip
        return True

    async def network_drift(self, cfg: DockerNetworkConfig) -> str | None:
        """How network `cfg.name` differs from `cfg` ("missing", or what it has); None when it
        matches. Read only (`shoal doctor`)."""
        async with self.engine.session() as api:
            attrs = await self._inspect(api, cfg.name)
        if attrs is None:
            return "missing"
        return None if _matches(attrs, cfg) else f"has {_describe(attrs)}"

    async def remove_network(self, name: str) -> RemoveResult:
        """Remove network `name` unless containers are attached (then say which)."""
        async with self.engine.session() as api:
            attrs = await self._inspect(api, name)
            if attrs is None:
                return RemoveResult(removed=False)
            attached = _attached(attrs)
            if attached:
                log.info(
                    "docker network %s: kept, containers attached: %s", name, ", ".join(attached)
                )
                return RemoveResult(removed=False, attached=attached)
            await api.delete(f"remove network {name}", f"/networks/{path_arg(attrs['Id'])}")
        log.info("docker network %s: removed", name)
        return RemoveResult(removed=True)

    async def network_subnets(self, exclude: Sequence[str] = ()) -> list[IPv4Network]:
        """IPv4 subnets of every Docker network except those named in `exclude` (sorted)."""
        async with self.engine.session() as api:
            nets: list[dict[str, Any]] = await api.get("list networks", "/networks") or []
        found: set[IPv4Network] = set()
        for net in nets:
            if net.get("Name") in exclude:
                continue
            for pool in (net.get("IPAM") or {}).get("Config") or []:
                subnet = ip_network(pool.get("Subnet") or "::/0", strict=False)
                if isinstance(subnet, IPv4Network):
                    found.add(subnet)
        return sorted(found)

    async def shoal_containers(
        self, network: str = "shoal", fresh: Collection[str] = ()
    ) -> list[ContainerReport]:
        """Every running container attached to `network` that has an IPv4 there, sorted by id.

        One list call, plus an inspect of each container that is new, whose health changed
        since the last call, or whose id is in `fresh` (containers an event just named: the
        list can lag behind their events, an inspect cannot). A few ms for tens of containers."""
        async with self.engine.session() as api:
            return await self._reports(api, network, fresh)

    async def _reports(
        self, api: Session, network: str, fresh: Collection[str]
    ) -> list[ContainerReport]:
        query = {"filters": filters_arg({"network": [network], "status": ["running"]})}
        summaries: list[dict[str, Any]] = (
            await api.get(f"list containers on {network}", "/containers/json", query) or []
        )
        listed = {s["Id"] for s in summaries}
        cache: dict[str, tuple[str, Inspected]] = {}
        reports: list[ContainerReport] = []

        async def inspect(cid: str) -> ContainerReport | None:
            attrs = await api.find(
                f"inspect container {cid[:12]}", f"/containers/{path_arg(cid)}/json"
            )
            if attrs is None:
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
                report = await inspect(cid)
            elif cached is not None and cached[0] == hint:
                cache[cid] = cached
                report = make_report(summary, cached[1], network)
            else:
                report = await inspect(cid)
            if report is not None:
                reports.append(report)
        for cid in fresh:
            if cid not in listed and (report := await inspect(cid)) is not None:
                reports.append(report)
        self._inspected = cache  # forget containers no longer running there
        return sorted(reports, key=lambda r: r.id)
