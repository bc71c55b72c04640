"""`shoal sidecar`: the entrypoint of a container that joins the mesh with its own identity.

It is `shoal up --no-docker --foreground` run inside the container, after checking that the
container was given what it needs (shoal.agent.sidecar). Flags fall back to environment
variables, the usual way to configure a container: SHOAL_SERVER, SHOAL_TOKEN (or a token
file, e.g. a compose secret), SHOAL_NAME, SHOAL_ADVERTISE_ADDR.
"""

from __future__ import annotations

import argparse
import logging
import os

from shoal.agent.sidecar import check_sidecar
from shoal.cli.agent_cmds import cmd_up

log = logging.getLogger(__name__)

SERVER_ENV = "SHOAL_SERVER"
NAME_ENV = "SHOAL_NAME"
ADVERTISE_ADDR_ENV = "SHOAL_ADVERTISE_ADDR"


def up_args(args: argparse.Namespace) -> argparse.Namespace:
    """The `shoal up` arguments a sidecar runs with: a host without Docker, in this process,
    flags first and the environment second."""
    return argparse.Namespace(
        server=args.server or os.environ.get(SERVER_ENV),
        token=args.token,
        token_file=args.token_file,
        token_fd=args.token_fd,
        name=args.name or os.environ.get(NAME_ENV),
        advertise_addr=args.advertise_addr or os.environ.get(ADVERTISE_ADDR_ENV),
        advertise_routes=None,
        listen_port=str(args.listen_port),  # as `up` takes it: text, '' the default
        state_dir=args.state_dir,
        docker_host=None,
        no_docker=True,
        key_max_age=None,
        foreground=True,
        metrics_listen=None,
        log_format=args.log_format,
    )


def cmd_sidecar(args: argparse.Namespace) -> int:
    dataplane = check_sidecar()
    log.info("sidecar: WireGuard on %s", dataplane)
    return cmd_up(up_args(args))
