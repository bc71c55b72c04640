"""`shoal netcheck`: argument handling and rendering over `shoal.agent.netcheck`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from pathlib import Path

from shoal.agent.errors import AgentNotRunning, NotRoot
from shoal.agent.facts import guess_advertise_addr
from shoal.agent.localclient import fetch_status
from shoal.agent.netcheck import netcheck
from shoal.agent.statefiles import StateDir
from shoal.model.netmap import WIREGUARD_PORT, Endpoint


def cmd_netcheck(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise NotRoot()  # the probe goes out on a raw socket from WireGuard's port
    state = StateDir(Path(args.state_dir))
    port = WIREGUARD_PORT  # without the agent: the default port (probing works all the same)
    with contextlib.suppress(AgentNotRunning):
        port = fetch_status(state.socket).listen_port or port
    addr = guess_advertise_addr()
    local = Endpoint(host=addr, port=port) if addr else None
    report = asyncio.run(netcheck(state, port, local))
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print("\n".join(report.lines()))
    return 0 if report.udp else 1
