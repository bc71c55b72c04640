"""`shoal env` (this node's mesh facts for compose interpolation and scripts) and `shoal services`
(the catalog; `--watch` streams its changes)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from shoal.agent.localclient import fetch_catalog, fetch_services, fetch_status
from shoal.agent.statefiles import StateDir
from shoal.cli.render import json_list, table
from shoal.model.api import ServiceInfo
from shoal.model.catalog import Catalog
from shoal.model.errors import ShoalError

DOCKER_NETWORK = "shoal"
WATCH_POLL = 60.0  # seconds one long-poll of `--watch` waits before asking again


class NotOnMesh(ShoalError):
    """The agent runs but has no mesh address yet: wait for `shoal status` to say RUNNING."""


def node_env(state_dir: Path) -> dict[str, str]:
    """What `shoal env` prints, in order: the variables a compose file interpolates."""
    state = StateDir(state_dir)
    status = fetch_status(state.socket)
    if status.mesh_ip is None or status.name is None:
        raise NotOnMesh(f"the agent has no mesh address yet (state {status.state.value})")
    env = {"SHOAL_NODE": status.name, "SHOAL_MESH_IP": str(status.mesh_ip)}
    if status.subnet is not None:  # a host without Docker has no container subnet
        env["SHOAL_SUBNET"] = str(status.subnet)
        env["SHOAL_NETWORK"] = DOCKER_NETWORK
    env["SHOAL_CATALOG_SOCKET"] = str(state.catalog_socket)
    return env


def cmd_env(args: argparse.Namespace) -> int:
    """KEY=VALUE lines (a compose `.env` file, `docker run --env-file`, `env $(shoal env) ...`);
    `--export` prefixes `export ` for `eval "$(shoal env --export)"`; `--json` an object."""
    env = node_env(Path(args.state_dir))
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        prefix = "export " if args.export else ""
        print("\n".join(f"{prefix}{key}={value}" for key, value in env.items()))
    return 0


def _ports(service_ports: list[str]) -> str:
    return ",".join(service_ports) or "-"


def render_services(services: tuple[ServiceInfo, ...] | list[ServiceInfo]) -> str:
    if not services:
        return "no containers on the shoal network anywhere in the mesh"
    rows = []
    for service in services:
        for i, instance in enumerate(service.instances):
            ports = [f"{p.port}/{p.protocol}" for p in instance.ports]
            rows.append(
                (
                    service.name if i == 0 else "",
                    instance.container,
                    instance.node,
                    str(instance.ip),
                    _ports(ports),
                    instance.health,
                )
            )
    return table(("SERVICE", "INSTANCE", "HOST", "IP", "PORTS", "HEALTH"), rows)


def cmd_services(args: argparse.Namespace) -> int:
    """The catalog as this host's agent sees it, or the server's with --data-dir/--server;
    `--watch` prints it again on every change until interrupted."""
    if args.data_dir or args.server:
        if args.watch:
            raise ShoalError("--watch follows this host's agent: drop --data-dir/--server")
        from shoal.cli.server_cmds import cmd_services_admin

        return cmd_services_admin(args)
    state = StateDir(Path(args.state_dir))
    if args.watch:
        return _watch(state, as_json=args.json)
    services = fetch_services(state.socket)
    print(json_list(services) if args.json else render_services(services))
    return 0


def _watch(state: StateDir, *, as_json: bool) -> int:
    """One line of JSON per catalog (`--json`: a Catalog, for tools) or a table under a header
    per change; the first is printed at once. Ends with Ctrl-C (or a signal) only."""
    catalog: Catalog | None = None
    while True:
        new = fetch_catalog(
            state.catalog_socket, None if catalog is None else catalog.index, WATCH_POLL
        )
        if catalog is not None and new.index == catalog.index:
            continue  # the long-poll timed out unchanged
        catalog = new
        if as_json:
            print(catalog.model_dump_json())
        else:
            print(f"# catalog index {catalog.index} at {datetime.now():%H:%M:%S}")
            print(render_services(catalog.services))
            print()
        sys.stdout.flush()
