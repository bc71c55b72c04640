"""Tests mirror the sources: every module `src/shoal/<package>/<module>.py` has its tests in
`tests/<package>/test_<module>.py`, so a reader finds a module's tests without searching and a
module without any stands out.

Exempt by rule (checked on the module's syntax tree, not trusted): a package `__init__` that
only re-exports (docstring, imports, `__all__`, constants), and an `errors.py` of exception
classes only (a docstring drawing the tree, constructors that word the message: they are
raised and asserted in the tests of the modules that raise them). Every other exception is in
`TESTED_ELSEWHERE` with the reason, and names the test modules that do test it; this check
fails on an entry that is no longer needed (the module is gone, or now has its mirror) and on
a named test that does not reach the module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "shoal"
TESTS = ROOT / "tests"

# Module (dotted, below `shoal`) → the test modules (below tests/) that test it instead of a
# mirror. A unit test must import the module, directly or through the shoal modules it
# imports (or a conftest's fixtures); an end-to-end test (marked e2e: it runs the CLI as
# processes in a lab or VM) is taken at its word.
TESTED_ELSEWHERE: dict[str, tuple[str, ...]] = {
    # One contract suite runs every store backend (and the export/import between them).
    "store.base": ("store/test_store.py",),
    "store.memory": ("store/test_store.py",),
    "store.sqlite": ("store/test_store.py",),
    "store.postgresql": ("store/test_store.py",),
    "store.transfer": ("store/test_store.py",),
    "store.rows": ("store/test_store.py",),
    "store.claims": ("store/test_store.py",),  # the signature claims of SQLite and memory
    "store": ("store/test_store.py",),  # open_store: which backend a URL names
    # Server replicas and their PostgreSQL in the lab: they run as processes in the lab's
    # namespaces (the scale benchmark's PostgreSQL point runs the cluster alone too).
    "lab.replicas": ("e2e/test_ha.py",),
    # The policy language: parsing (model) and compiling (plan) each have a suite under
    # tests/policy, named for the step rather than the package.
    "model.policy": ("policy/test_parse.py",),
    "model.policyfile": ("policy/test_parse.py",),
    # The TCP relay's two ends and the standalone relay's identity run together, end to end
    # over real TLS on loopback: one suite for the relay, its clients and `shoal relay`.
    "agent.tcprelay": ("control/test_tcprelay.py",),
    "control.relayhost": ("control/test_tcprelay.py",),
    "plan.policy": ("policy/test_compile.py", "firewall/test_nft.py"),
    # The server's wiring, use cases and error table: the real ASGI app on loopback, through
    # the client, in suites named for what they check (api, bounds, rotation, trust, ...).
    "control.app": ("control/test_api.py", "control/test_bounds.py"),
    "control.service": ("control/test_api.py", "control/test_rotation.py"),
    "control.errors": ("control/test_api.py", "control/test_bounds.py"),  # the status table
    "control.ca": ("control/test_ca_rotation.py", "control/test_trust.py"),
    "controlclient.tls": ("control/test_trust.py", "control/test_api.py"),
    # The web dashboard: its view and routes in one suite, and in a browser against the lab.
    "control.dashboard.view": ("control/test_dashboard.py",),
    "control.dashboard.web": (
        "control/test_dashboard.py",
        "control/test_dashboard_live.py",
        "e2e/test_dashboard_browser.py",
    ),
    # The nodes' path reports: the store, POST /v1/report and what the page shows, with the
    # dashboard's live side.
    "control.dashboard.reports": ("control/test_dashboard_live.py",),
    # The agent's parts, driven through the daemon with the fakes of shoal.testing.
    "agent.adapters": ("agent/test_daemon.py",),
    "agent.config": ("agent/test_daemon.py", "cli/test_agent_cmds.py"),
    "agent.health": ("agent/test_reconciler.py", "agent/test_metrics.py"),
    "agent.localapi": ("cli/test_doctor_cmds.py",),
    "agent.localclient": ("cli/test_doctor_cmds.py",),
    "agent.ping": ("agent/test_doctor.py",),
    # NAT traversal and its probe need two networks and a relay: the lab's NAT test.
    "cli.netcheck_cmds": ("e2e/test_nat.py",),
    # Host facts (addresses, default route) read from the real host: every agent start.
    "agent.facts": ("e2e/test_mesh.py",),
    # The CLI: argument parsing and its commands as an operator runs them.
    "cli.tokenpass": ("cli/test_agent_cmds.py",),
    "cli.lab_cmds": ("lab/test_cli.py",),
    # Docker's events feed the watcher: tested with it against a real dockerd.
    "dockerhost.events": ("dockerhost/test_watch.py",),
    # Backend errors translated at the interface's boundary: through the backends' suites.
    "dataplane.errors": ("dataplane/test_base.py", "dataplane/test_wggo.py"),
    # The DNS wire format: through the responder and its fuzz test.
    "dns.wire": ("dns/test_server.py", "dns/test_fuzz.py"),
    # Each runs its binary (nft, iptables) or writes /proc: in a network namespace, through
    # the firewall's and the host's suites.
    "firewall.adapter": ("firewall/test_drift.py", "agent/test_daemon.py"),
    "firewall.nftables": ("firewall/test_drift.py",),
    "firewall.iptables": ("firewall/test_drift.py",),
    "hostnet.sysctl": ("hostnet/test_netlink.py",),
    "hostnet.inspect": ("hostnet/test_netlink.py",),
    # The lab's processes, base image and state file: what every lab test stands on.
    "lab.procs": ("lab/test_lab.py",),
    "lab.image": ("lab/test_lab.py",),
    "lab.state": ("lab/test_lab.py",),
    # The examples' HTTP app runs inside the lab's app image, against real Redis and Postgres.
    "lab.demo_app": ("e2e/test_patterns.py",),
    # Values of the agent's status and doctor reports: through what builds and renders them.
    "model.status": ("agent/test_daemon.py", "cli/test_agent_cmds.py"),
    "model.doctor": ("agent/test_doctor.py", "cli/test_doctor_cmds.py"),
    # The test kit: exercised by the tests that use it.
    "testing.builders": ("model/test_netmap.py",),
    "testing.clock": ("agent/test_reconciler.py",),
    "testing.doctor": ("agent/test_doctor.py",),
    "testing.fakes": ("agent/test_reconciler.py", "dataplane/test_base.py"),
    "testing.postgres": ("conftest.py",),  # the PostgreSQL fixtures every package may use
    "testing.prometheus": ("model/test_prometheus.py",),
    "testing.systemctl": ("agent/test_systemd.py",),
}


def _modules() -> dict[str, Path]:
    """Every module of the package, dotted below `shoal` (a package by its own name)."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


def _mirror(module: str, path: Path) -> Path:
    *package, name = module.split(".")
    if path.name == "__init__.py":
        package, name = [*package, name], "init"
    return TESTS.joinpath(*package, f"test_{name}.py")


def _body(tree: ast.Module) -> list[ast.stmt]:
    """The statements after the docstring."""
    first = tree.body[:1]
    if first and isinstance(first[0], ast.Expr) and isinstance(first[0].value, ast.Constant):
        return tree.body[1:]
    return tree.body


def _only_reexports(tree: ast.Module) -> bool:
    """Imports, `__all__` and constants: nothing to test that the re-exported modules do not."""
    return all(
        isinstance(stmt, ast.Import | ast.ImportFrom)
        or (
            isinstance(stmt, ast.Assign | ast.AnnAssign)
            and isinstance(stmt.value, ast.Constant | ast.List | ast.Tuple)
        )
        for stmt in _body(tree)
    )


def _only_classes(tree: ast.Module) -> bool:
    """Imports and classes (an error tree): no function or table of its own."""
    return all(isinstance(stmt, ast.Import | ast.ImportFrom | ast.ClassDef) for stmt in _body(tree))


def _exempt_by_rule(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    if path.name == "__init__.py":
        return _only_reexports(tree)
    return path.name == "errors.py" and _only_classes(tree)


@cache
def _imports(path: Path) -> frozenset[str]:
    """The shoal modules `path` imports (anywhere in it), dotted below `shoal`."""
    modules = _modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        for name in names:
            if name.startswith("shoal.") and name[len("shoal.") :] in modules:
                found.add(name[len("shoal.") :])
    return frozenset(found)


def _reaches(test: Path, module: str) -> bool:
    """Whether `test` imports `module`, directly or through the shoal modules it imports."""
    modules = _modules()
    seen: set[str] = set()
    todo = list(_imports(test))
    while todo:
        current = todo.pop()
        if current == module:
            return True
        if current not in seen:
            seen.add(current)
            todo.extend(_imports(modules[current]))
    return False


def test_every_module_has_a_mirrored_test_or_says_where_it_is_tested() -> None:
    unmirrored = [
        f"src/shoal/{path.relative_to(SRC)}: no {_mirror(module, path).relative_to(ROOT)}"
        for module, path in _modules().items()
        if not _mirror(module, path).exists()
        and module not in TESTED_ELSEWHERE
        and not _exempt_by_rule(path)
    ]
    assert unmirrored == [], (
        "add the mirrored test module, or an entry in tests/test_layout.py's TESTED_ELSEWHERE "
        "naming the tests that cover it and why:\n" + "\n".join(unmirrored)
    )


def test_the_allowlist_holds_only_modules_that_need_it() -> None:
    modules = _modules()
    stale = [
        f"{module}: {'no such module' if module not in modules else 'it has its mirror now'}"
        for module in TESTED_ELSEWHERE
        if module not in modules or _mirror(module, modules[module]).exists()
    ]
    assert stale == [], "remove from TESTED_ELSEWHERE:\n" + "\n".join(stale)


def test_the_tests_named_in_the_allowlist_reach_their_module() -> None:
    wrong = []
    for module, tests in TESTED_ELSEWHERE.items():
        for name in tests:
            test = TESTS / name
            if not test.exists():
                wrong.append(f"{module}: {name} does not exist")
            elif "pytest.mark.e2e" not in test.read_text() and not _reaches(test, module):
                wrong.append(f"{module}: {name} does not import it (nor anything that does)")
    assert wrong == [], "\n".join(wrong)
