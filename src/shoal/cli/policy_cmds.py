"""`shoal policy set|get|clear|check|test`: the access-control policy (parsing and rendering only).

`check` runs offline (parse + inline tests, no server); the others talk to the server like
the other admin commands (`--data-dir` on the server host, or `--server` + SHOAL_ADMIN_TOKEN).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from shoal.cli.server_cmds import UsageError, _with_admin
from shoal.model.api import PolicySetRequest, PolicyVerdict
from shoal.model.errors import ShoalError
from shoal.model.policy import MAX_POLICY_BYTES, Policy, PolicyError, parse, run_tests


def _read(path: str) -> tuple[str, str]:
    """(file name as policies name it, text) of the policy file at `path`."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read policy file {path}: {exc}") from exc
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise UsageError(f"{path}: larger than {MAX_POLICY_BYTES} bytes")
    # The name goes into nft comments and error lines: keep it to a safe alphabet.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).name)[:64] or "policy"
    return name, text


def checked(path: str) -> tuple[Policy, str, str]:
    """The policy at `path`, parsed with its inline tests passing, else UsageError."""
    name, text = _read(path)
    try:
        policy = parse(text, name)
    except PolicyError as exc:
        raise UsageError(str(exc)) from exc
    failed = run_tests(policy)
    if failed:
        raise UsageError(f"{len(failed)} inline test(s) fail:\n  " + "\n  ".join(failed))
    return policy, name, text


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy, _name, _text = checked(args.file)
    print(
        f"{args.file}: ok ({len(policy.rules)} rules, {len(policy.publish)} publish claims, "
        f"{len(policy.tests)} tests pass)"
    )
    return 0


def cmd_policy_set(args: argparse.Namespace) -> int:
    _policy, name, text = checked(args.file)  # the server checks again; this fails faster
    info = _with_admin(args, lambda c: c.set_policy(PolicySetRequest(file=name, source=text)))
    print(f"policy r{info.revision} set from {info.file} ({info.rules} rules)")
    return 0


def cmd_policy_get(args: argparse.Namespace) -> int:
    info = _with_admin(args, lambda c: c.get_policy())
    if args.json:
        print(info.model_dump_json(indent=2))
        return 0
    print(f"# policy r{info.revision} from {info.file}, set {info.set_at:%Y-%m-%d %H:%M:%S} UTC")
    sys.stdout.write(info.source if info.source.endswith("\n") else info.source + "\n")
    return 0


def cmd_policy_clear(args: argparse.Namespace) -> int:
    cleared = _with_admin(args, lambda c: c.clear_policy())
    if cleared.revision is None:
        print("no policy was set; shoal's defaults apply")
    else:
        print(f"policy r{cleared.revision}: removed; shoal's defaults apply")
    return 0


def _target(text: str, proto: str) -> tuple[str, int | None]:
    name, sep, port = text.rpartition(":")
    if not sep:
        if proto != "icmp":
            raise UsageError(f"--to {text}: give the port as NAME:PORT (or --proto icmp)")
        return text, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"--to {text}: port must be 1-65535")
    return name, None if proto == "icmp" else int(port)


def render_verdict(v: PolicyVerdict) -> str:
    what = v.proto if v.port is None else f"{v.proto}/{v.port}"
    return f"{'allow' if v.allow else 'deny '}  {v.src} -> {v.dst} {what}: {v.reason}"


def cmd_policy_test(args: argparse.Namespace) -> int:
    """Print each verdict; exit 1 when any pair is denied, as `shoal doctor` does when a
    check failed, so a script can assert a flow with `shoal policy test ... && deploy`; exit
    2 when it could not ask (a name the server does not know, no server, a bad token), so
    the script can tell "denied" from "not checked", as grep and diff do."""
    dst, port = _target(args.to, args.proto)
    try:
        verdicts = _with_admin(args, lambda c: c.test_policy(args.src, dst, args.proto, port))
    except ShoalError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 2
    for v in verdicts:
        print(render_verdict(v))
    return 0 if all(v.allow for v in verdicts) else 1
