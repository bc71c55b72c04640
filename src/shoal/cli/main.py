"""`shoal` command line: parsing and dispatch. Keep the contract in ARCHITECTURE.md stable."""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from shoal.model.errors import ShoalError

DEFAULT_SERVER_DATA_DIR = "/var/lib/shoal/server"
DEFAULT_STATE_DIR = "/var/lib/shoal/agent"


def _handler(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    # Imported lazily: `shoal status` must not pay for the server's imports, and vice versa.
    def run(args: argparse.Namespace) -> int:
        fn: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"shoal.cli.{module}"), name
        )
        return fn(args)

    return run


def log_format_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-format",
        choices=("text", "json"),  # shoal.cli.logs.LOG_FORMATS, not imported here
        default="text",
        help="one line per event: text, or a JSON object (default text)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="Encrypted WireGuard mesh for Docker containers across hosts."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def admin_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", default=DEFAULT_SERVER_DATA_DIR, help="server data dir")
        p.add_argument("--server", help="server URL (remote admin; needs SHOAL_ADMIN_TOKEN)")

    p = sub.add_parser("server", help="run the control server")
    p.add_argument("--listen", default="0.0.0.0:8443", metavar="ADDR:PORT")
    p.add_argument("--data-dir", default=DEFAULT_SERVER_DATA_DIR)
    p.add_argument("--store", help="store URL (default sqlite in the data dir)")
    p.add_argument("--mesh-pool", default=None, help="mesh IP pool (default 100.64.0.0/10)")
    p.add_argument("--container-pool", default=None, help="container pool (default 10.42.0.0/16)")
    p.add_argument("--subnet-prefix", type=int, default=None, help="per-host subnet size (24)")
    p.add_argument(
        "--mtu",
        type=int,
        default=None,
        help="mesh MTU on every hop (1420; underlay MTU - 80, e.g. 8920 on jumbo frames)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=None,
        help="seconds without a word from a host before its containers are withdrawn (15)",
    )
    p.add_argument(
        "--address-quarantine",
        default=None,
        metavar="DURATION",
        help="how long a removed node's mesh IP and subnet go to nobody else (24h)",
    )
    p.add_argument(
        "--ephemeral-timeout",
        default=None,
        metavar="DURATION",
        help="offline time after which a node joined with an --ephemeral token is removed (30m)",
    )
    p.add_argument(
        "--no-limits-from",
        default=None,
        metavar="CIDR[,CIDR...]",
        help="sources exempt from the per-address connection and rate limits (a NAT in front "
        "of many hosts, a benchmark fleet); server-wide caps and timeouts still apply",
    )
    p.add_argument(
        "--relay-port",
        default="443",
        metavar="PORT|off",
        help="TCP port of the relay over TLS for hosts whose UDP is blocked (443; off: none)",
    )
    p.add_argument(
        "--relay-at",
        action="append",
        default=[],
        metavar="HOST:PORT,KEY,SHA256",
        help="announce a standalone relay (the line `shoal relay` prints); repeatable",
    )
    log_format_flag(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_server"))
    server_sub = p.add_subparsers(dest="server_cmd", required=False, metavar="[SUBCOMMAND]")
    rotate = server_sub.add_parser(
        "rotate-ca", help="rotate the server's CA without re-joining hosts (three steps)"
    )
    step = rotate.add_mutually_exclusive_group()
    step.add_argument("--finish", action="store_true", help="step 2: sign with the new CA")
    step.add_argument(
        "--drop-previous", action="store_true", help="step 3: stop trusting the old CA"
    )
    # SUPPRESS: `shoal server --data-dir D rotate-ca` keeps D (a subparser default would win).
    rotate.add_argument("--data-dir", default=argparse.SUPPRESS)
    rotate.set_defaults(run=_handler("server_cmds", "cmd_rotate_ca"))
    migrate = server_sub.add_parser(
        "migrate",
        help="apply the PostgreSQL schema migrations (--to), or move a mesh's state into an "
        "empty PostgreSQL database (--from sqlite:PATH --to postgresql://...)",
    )
    migrate.add_argument("--from", dest="source", metavar="URL", help="the store to copy")
    migrate.add_argument("--to", dest="target", metavar="URL", required=True)
    migrate.set_defaults(run=_handler("server_cmds", "cmd_server_migrate"))

    p = sub.add_parser(
        "relay", help="run only a relay over TCP/TLS, on a relay host apart from the server"
    )
    p.add_argument("--listen", default="0.0.0.0:443", metavar="ADDR:PORT")
    p.add_argument("--announce", default=None, metavar="ADDR", help="the address hosts reach it at")
    p.add_argument("--data-dir", default="/var/lib/shoal-relay", help="its keys and certificate")
    p.add_argument(
        "--server",
        required=True,
        metavar="URL",
        help="the control server (an admin token of scope read in SHOAL_ADMIN_TOKEN)",
    )
    log_format_flag(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_relay"))

    token = sub.add_parser("token", help="join tokens").add_subparsers(
        dest="token_cmd", required=True
    )
    p = token.add_parser("create", help="create a join token")
    p.add_argument("--reusable", action="store_true", help="for many hosts (see --uses)")
    p.add_argument("--uses", type=int, default=None, help="how many hosts may join with it")
    p.add_argument("--expires", help="lifetime such as 30m, 1h, 7d, or never (default 24h)")
    p.add_argument(
        "--ephemeral", action="store_true", help="its nodes are removed once offline a while"
    )
    p.add_argument("--tag", action="append", default=[])
    admin_flags(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_token_create"))
    p = token.add_parser("list", help="list join tokens")
    p.add_argument("--json", action="store_true")
    admin_flags(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_token_list"))
    p = token.add_parser("revoke", help="revoke a join token")
    p.add_argument("id")
    admin_flags(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_token_revoke"))

    admin = sub.add_parser("admin", help="admin credentials").add_subparsers(
        dest="admin_cmd", required=True
    )
    admin_token = admin.add_parser("token", help="scoped admin tokens").add_subparsers(
        dest="admin_token_cmd", required=True
    )
    p = admin_token.add_parser("create", help="create a scoped, expiring admin token")
    p.add_argument("--scope", choices=("read", "admin"), required=True)
    p.add_argument("--expires", help="lifetime such as 12h, 30d, or never (default 30d)")
    admin_flags(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_admin_token_create"))
    p = admin_token.add_parser("list", help="list admin tokens")
    p.add_argument("--json", action="store_true")
    admin_flags(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_admin_token_list"))
    p = admin_token.add_parser("revoke", help="revoke an admin token")
    p.add_argument("id")
    admin_flags(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_admin_token_revoke"))

    p = sub.add_parser("nodes", help="list the mesh's nodes")
    p.add_argument("--json", action="store_true")
    admin_flags(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_nodes"))
    node = sub.add_parser("node", help="manage nodes").add_subparsers(
        dest="node_cmd", required=True
    )
    p = node.add_parser("remove", help="remove a node from the mesh and revoke its key")
    p.add_argument("name")
    p.add_argument(
        "--allow-rejoin",
        action="store_true",
        help="do not revoke its key: it may join again with a join token",
    )
    admin_flags(p)
    p.set_defaults(run=_handler("server_cmds", "cmd_node_remove"))
    p = node.add_parser(
        "rotate-key",
        help="on a host: replace this node's WireGuard key (every peer switches, no packet lost)",
    )
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.set_defaults(run=_handler("agent_cmds", "cmd_rotate_key"))

    policy = sub.add_parser("policy", help="the access-control policy").add_subparsers(
        dest="policy_cmd", required=True
    )
    p = policy.add_parser("set", help="validate (inline tests too) and set the policy")
    p.add_argument("file")
    admin_flags(p)
    p.set_defaults(run=_handler("policy_cmds", "cmd_policy_set"))
    p = policy.add_parser("get", help="print the policy in force")
    p.add_argument("--json", action="store_true")
    admin_flags(p)
    p.set_defaults(run=_handler("policy_cmds", "cmd_policy_get"))
    p = policy.add_parser("clear", help="remove the policy: back to shoal's defaults")
    admin_flags(p)
    p.set_defaults(run=_handler("policy_cmds", "cmd_policy_clear"))
    p = policy.add_parser("check", help="parse a policy file and run its tests (offline)")
    p.add_argument("file")
    p.set_defaults(run=_handler("policy_cmds", "cmd_policy_check"))
    p = policy.add_parser("test", help="allow or deny, and the rule that decided")
    p.add_argument("--from", dest="src", required=True, help="container, service or node")
    p.add_argument("--to", required=True, metavar="NAME:PORT", help="container, service or node")
    p.add_argument("--proto", default="tcp", choices=("tcp", "udp", "icmp"))
    admin_flags(p)
    p.set_defaults(run=_handler("policy_cmds", "cmd_policy_test"))

    routes = sub.add_parser(
        "routes", help="subnet routes hosts advertise (--advertise-routes)"
    ).add_subparsers(dest="routes_cmd", required=True)
    p = routes.add_parser("list", help="advertised routes and their status")
    p.add_argument("--json", action="store_true")
    admin_flags(p)
    p.set_defaults(run=_handler("routes_cmds", "cmd_routes_list"))
    for verb, what in (
        ("approve", "peers route it through its host"),
        ("reject", "no peer routes it"),
    ):
        p = routes.add_parser(verb, help=f"{verb} a route: {what}")
        p.add_argument("route", metavar="ID", help="the route's id (routes list) or prefix")
        admin_flags(p)
        p.set_defaults(run=_handler("routes_cmds", f"cmd_routes_{verb}"))

    cert = sub.add_parser("cert", help="certificates for services (mTLS)").add_subparsers(
        dest="cert_cmd", required=True
    )
    p = cert.add_parser("issue", help="a certificate for SERVICE's mesh names (key made here)")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--out", help="directory for key.pem, cert.pem, ca.pem (default: ./SERVICE)")
    admin_flags(p)
    p.set_defaults(run=_handler("cert_cmds", "cmd_cert_issue"))

    p = sub.add_parser(
        "up",
        help="join this host to the mesh and keep it configured",
        description="Join this host to the mesh, or bring its agent to the settings given. "
        "On a joined host `shoal up` is declarative: a flag given sets its setting, a flag "
        "omitted keeps the one the agent runs with. The same settings: nothing to do (exit 0); "
        "new ones: the agent restarts with them, keeping its node identity and key (no token "
        "needed, no packet lost). A different --server, --name, mesh (token) or --no-docker "
        "cannot change in place: the error names the flag; `shoal down --leave`, then join "
        "again. An empty value ('') sets a setting back to its default. A join whose host "
        "configuration failed keeps the registered node: `shoal up` again resumes it without "
        "the (spent) token.",
    )
    p.add_argument("--server", help="server URL, e.g. https://10.0.0.1:8443")
    p.add_argument("--token", help="join token SHOAL-1-..., or - to read it from stdin")
    p.add_argument("--token-file", help="read the join token from this file")
    p.add_argument("--token-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--name", help="node name (default: hostname)")
    p.add_argument("--advertise-addr", help="underlay IP other hosts reach this one at")
    p.add_argument(
        "--advertise-routes",
        metavar="CIDR[,CIDR]",
        help="offer these networks (a LAN, a VPC subnet) to the mesh once an admin approves "
        "them (shoal routes approve); '' withdraws them",
    )
    p.add_argument("--listen-port", default=None, help="WireGuard UDP port (51820)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.add_argument("--docker-host", default=None, help="Docker API URL (default: DOCKER_HOST)")
    p.add_argument(
        "--no-docker",
        action="store_true",
        help="a host without Docker (a laptop, a VM): join with a mesh IP only; this host "
        "resolves .shoal names and its services are open to the mesh",
    )
    p.add_argument(
        "--key-max-age",
        default=None,
        help="rotate the WireGuard key once it is this old, e.g. 30d, or never (default 90d)",
    )
    p.add_argument("--foreground", action="store_true", help="run the agent in this process")
    p.add_argument(
        "--metrics-listen",
        default=None,
        metavar="ADDR[:PORT]",
        help="serve Prometheus /metrics on 127.0.0.1[:9469] or mesh[:9469] (default: off)",
    )
    log_format_flag(p)
    p.set_defaults(run=_handler("agent_cmds", "cmd_up"))

    p = sub.add_parser(
        "sidecar",
        help="join the mesh from inside a container (NET_ADMIN only); apps sharing its "
        "network namespace (network_mode: service:NAME) are on the mesh",
    )
    p.add_argument("--server", help="server URL (default $SHOAL_SERVER)")
    p.add_argument("--token", help="join token, or - to read it from stdin (or $SHOAL_TOKEN)")
    p.add_argument("--token-file", help="read the join token from this file (a secret)")
    p.add_argument("--token-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--name", help="node name (default $SHOAL_NAME, else the hostname)")
    p.add_argument(
        "--advertise-addr",
        help="address other hosts reach this container's published UDP port at "
        "(default $SHOAL_ADVERTISE_ADDR)",
    )
    p.add_argument("--listen-port", type=int, default=51820, help="WireGuard UDP port")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="a volume keeps the identity")
    log_format_flag(p)
    p.set_defaults(run=_handler("sidecar_cmds", "cmd_sidecar"))

    p = sub.add_parser("status", help="this host, its peers, handshakes and traffic")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.set_defaults(run=_handler("agent_cmds", "cmd_status"))

    p = sub.add_parser("netcheck", help="this host's NAT kind, UDP and TCP/443 reachability")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.set_defaults(run=_handler("netcheck_cmds", "cmd_netcheck"))

    p = sub.add_parser("ping", help="check reachability of a node or container over the mesh")
    p.add_argument("target", metavar="NODE|IP|CONTAINER")
    p.add_argument("--count", "-c", type=int, default=3)
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.set_defaults(run=_handler("agent_cmds", "cmd_ping"))

    p = sub.add_parser("doctor", help="check this host and its paths; name what is broken")
    p.add_argument("target", nargs="?", help="node, container, service, or IP[:PORT]")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.set_defaults(run=_handler("doctor_cmds", "cmd_doctor"))

    p = sub.add_parser("services", help="the service catalog: services, instances, hosts, health")
    p.add_argument("--json", action="store_true")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="ask this host's agent")
    p.add_argument("--data-dir", default=None, help="ask the server (on the server host)")
    p.add_argument("--server", default=None, help="ask a remote server (SHOAL_ADMIN_TOKEN)")
    p.add_argument("--watch", action="store_true", help="print the catalog again on each change")
    p.set_defaults(run=_handler("catalog_cmds", "cmd_services"))

    p = sub.add_parser("env", help="this node's mesh address and names, for compose and scripts")
    p.add_argument("--json", action="store_true")
    p.add_argument("--export", action="store_true", help="prefix each line with `export `")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.set_defaults(run=_handler("catalog_cmds", "cmd_env"))

    p = sub.add_parser("down", help="undo everything shoal changed on this host")
    p.add_argument("--leave", action="store_true", help="also remove this node from the mesh")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.add_argument("--docker-host", default=None)
    p.set_defaults(run=_handler("agent_cmds", "cmd_down"))

    lab = sub.add_parser("lab", help="a multi-host lab on this machine").add_subparsers(
        dest="lab_cmd", required=True
    )
    p = lab.add_parser("up", help="create N hosts (netns + dockerd each) and a server")
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--name", default="lab", help="lab name (several labs can coexist)")
    p.add_argument(
        "--nat",
        default="",
        metavar="HOST=KIND[:ROUTER],...",
        help="put hosts behind NAT routers; KIND: easy, hard, udp-blocked; hosts naming the "
        "same ROUTER share it (e.g. h2=easy,h3=hard,h4=easy:home,h5=easy:home)",
    )
    p.set_defaults(run=_handler("lab_cmds", "cmd_lab_up"))
    p = lab.add_parser("down", help="remove the lab and everything in it")
    p.add_argument("--name", default="lab")
    p.set_defaults(run=_handler("lab_cmds", "cmd_lab_down"))
    p = lab.add_parser("exec", help="run a command on a lab host")
    p.add_argument("--name", default="lab")
    p.add_argument("host")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p.set_defaults(run=_handler("lab_cmds", "cmd_lab_exec"))
    p = lab.add_parser("bench", help="benchmark shoal against the alternatives in a lab")
    p.add_argument("--hosts", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="short runs (a smoke test, not figures)")
    p.add_argument("--out", default="docs", help="where benchmarks.md, .json and .png go")
    p.add_argument(
        "--only", action="append", default=[], help="dataplane | controlplane | scale (repeatable)"
    )
    p.set_defaults(run=_handler("bench_cmds", "cmd_lab_bench"))
    p = lab.add_parser(
        "images", help="build (once, cached) and load the examples' images on every lab host"
    )
    p.add_argument("--name", default="lab")
    p.add_argument("tags", nargs="*", metavar="IMAGE", help="only these (default: all)")
    p.set_defaults(run=_handler("lab_cmds", "cmd_lab_images"))
    p = lab.add_parser("status", help="show the lab's hosts and addresses")
    p.add_argument("--name", default="lab")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_handler("lab_cmds", "cmd_lab_status"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command in ("up", "sidecar"):
        from shoal.cli.tokenpass import hide_token

        hide_token(args)  # may start this command again, the token out of argv and env
        # Starting the agent allocates its long-lived objects (modules, models, schemas)
        # by the hundred thousand, and each batch set off collections that found no garbage:
        # ~35 ms of CPU of a join's ~550. The agent collects again once started, those
        # objects frozen out of it (`shoal.cli.agent_cmds.collect_again`).
        gc.disable()
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # a reader gone fails here, not at the interpreter's exit
        if argv is None and args.command == "up":
            _exit_at_once(code)
    except ShoalError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`shoal services --json | head`): the rest is dropped, as
        # `cat` does. Python would flush stdout again at exit and raise once more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


def _exit_at_once(code: int) -> NoReturn:
    """End this process now, with `code`, without tearing the interpreter down.

    The exit handlers run and the standard streams are flushed; only the teardown of every
    module and object is skipped: after `shoal up` imported the agent's modules that teardown
    took ~25 ms of CPU (~100 ms in a process that ran the agent), on the way to the join's
    first packet, and nothing of this process outlives it to need it."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
