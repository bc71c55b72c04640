"""`shoal lab up|down|exec|status`: argument handling and rendering over `shoal.lab`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from shoal.lab import Lab, LabError, LabNotFound
from shoal.lab.nat import parse_nat


def cmd_lab_up(args: argparse.Namespace) -> int:
    """Create the lab (kept until `shoal lab down`), start its server, make a reusable token."""
    if Lab.exists(args.name):
        raise LabError(f"lab {args.name} is already up: `shoal lab down --name {args.name}` first")
    nat = parse_nat(args.nat)
    lab = Lab.create(args.name, args.hosts, persistent=True, nat=nat)
    try:
        url = lab.start_server()
        token = lab.create_token(reusable=True)
    except BaseException:
        lab.destroy()
        raise
    _print_summary(lab)
    first = lab.hosts[0]
    name_flag = "" if args.name == "lab" else f" --name {args.name}"
    print(
        "\nRun a command on a host (its netns, its dockerd as DOCKER_HOST), e.g. join it:\n"
        f"  shoal lab exec{name_flag} {first.name} -- shoal up --server {url} --token {token} \\\n"
        f"      --advertise-addr {first.underlay_ip} --state-dir {first.state_dir} \\\n"
        f"      --docker-host {first.docker_host}\n"
        f"  shoal lab exec{name_flag} {first.name} -- docker ps\n"
        "Redis, PostgreSQL, the app and the sidecar of examples/ on every host: "
        f"shoal lab images{name_flag}\n"
        f"Remove everything: shoal lab down{name_flag}"
    )
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    """Remove the lab; a lab that does not exist is already down."""
    try:
        lab = Lab.load(args.name)
    except LabNotFound:
        print(f"no lab named {args.name}", file=sys.stderr)
        return 0
    lab.destroy()
    print(f"lab {args.name} removed", file=sys.stderr)
    return 0


def cmd_lab_exec(args: argparse.Namespace) -> int:
    """Run a command on a lab host with inherited stdio; its exit code is ours."""
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise LabError("usage: shoal lab exec HOST -- COMMAND [ARG...]")
    host = Lab.load(args.name).host(args.host)
    try:
        return subprocess.call(host.command(argv), env=host.environ())
    except KeyboardInterrupt:
        return 130


def cmd_lab_images(args: argparse.Namespace) -> int:
    """Build (once per recipe, cached) and load the examples' images (those named, else all)
    on every lab host."""
    for tag in Lab.load(args.name).load_images(args.tags or None):
        print(tag)
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    lab = Lab.load(args.name)
    if args.json:
        print(json.dumps(lab.status(), indent=2))
    else:
        _print_summary(lab)
    return 0


def _print_summary(lab: Lab) -> None:
    st = lab.status()
    server = st["server"]
    state = "running" if server["running"] else "stopped"
    print(f"lab {lab.name} ({st['dir']})")
    print(f"  server  {server['ip']:<13} {server['url'] or '-'} ({state}, netns {server['netns']})")
    for h in st["hosts"]:
        dockerd = "" if h["dockerd_running"] else "  (dockerd not running)"
        nat = f"  behind {h['nat']} NAT at {h['public_ip']}" if h["nat"] else ""
        print(
            f"  {h['name']:<7} {h['underlay_ip']:<13} DOCKER_HOST={h['docker_host']}{dockerd}{nat}"
        )
    print(f"  token   {st['token'] or '-'}")
