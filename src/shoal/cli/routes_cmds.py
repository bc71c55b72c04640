"""`shoal routes list|approve|reject`: subnet routes nodes advertise (parsing and rendering only).

Admin commands like the others: on the server host with `--data-dir`, or anywhere with
`--server` + SHOAL_ADMIN_TOKEN. A route is named by the id `routes list` shows or its prefix.
"""

from __future__ import annotations

import argparse
import json

from shoal.cli.server_cmds import UsageError, _with_admin
from shoal.model.routes import MAX_REF, RouteInfo


def render_routes(routes: list[RouteInfo]) -> str:
    """The table `shoal routes list` prints."""
    if not routes:
        return "no advertised routes (shoal up --advertise-routes CIDR[,CIDR] on a host)\n"
    rows = [("ID", "NODE", "PREFIX", "STATUS", "ADVERTISED")]
    rows += [
        (r.id, r.node, str(r.prefix), r.status, f"{r.advertised_at:%Y-%m-%d %H:%M:%S}")
        for r in routes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in rows
    )


def cmd_routes_list(args: argparse.Namespace) -> int:
    routes = _with_admin(args, lambda c: c.list_routes())
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in routes], indent=2))
    else:
        print(render_routes(routes), end="")
    return 0


def _ref(text: str) -> str:
    """A route id or prefix as the server takes it (at most 64 characters)."""
    if not 0 < len(text) <= MAX_REF:
        raise UsageError(f"route {text[:70]!r}: give its id (shoal routes list) or its prefix")
    return text


def cmd_routes_approve(args: argparse.Namespace) -> int:
    route = _with_admin(args, lambda c: c.decide_route(_ref(args.route), approve=True))
    print(f"route {route.prefix} of {route.node} approved: peers route it through {route.node}")
    return 0


def cmd_routes_reject(args: argparse.Namespace) -> int:
    route = _with_admin(args, lambda c: c.decide_route(_ref(args.route), approve=False))
    print(f"route {route.prefix} of {route.node} rejected: no peer routes it")
    return 0
