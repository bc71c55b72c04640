"""What the dashboard shows, as frozen values, and its HTML: pure, no I/O, no aiohttp.

    MeshView         one look at the registry and the relay (`look`), ages left out: two
                     looks compare equal when nothing an operator would see changed
    events_between   what changed from one look to the next, as one-line events
    render_page      the whole page (the live part inside), render_live the live part only,
                     render_login the form shown without a session

Every text that comes from a host (node, container, compose and label names, label values)
goes through `_e` (html.escape, quotes too) and nowhere else; the page also forbids inline
script (see `web.SECURITY_HEADERS`), so an escape forgotten here still runs nothing.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from shoal.control.dashboard.reports import NodeReports, capped
from shoal.control.registry import Registry
from shoal.control.relay import Relay
from shoal.model.api import PathCounts, PathKind

# Pairs of nodes: above this many nodes the page lists relayed pairs only, not the whole matrix.
MATRIX_MAX_NODES = 24
EVENTS_SHOWN = 50


@dataclass(frozen=True, slots=True)
class NodeRow:
    id: str
    name: str
    online: bool
    mesh_ip: str
    subnet: str
    endpoints: tuple[str, ...]  # "kind host:port"
    key: str  # the public key's short form
    rotating_to: str | None  # a key rotation in progress: the next key's short form
    tags: tuple[str, ...]
    ephemeral: bool
    created_at: datetime
    # Only once offline: an online node is seen with every poll, and an age that moves every
    # second would make every look differ (the page shows "online" instead).
    last_seen: datetime | None
    # From the node's last report (None: none within reports.STALE_SECONDS): its version and
    # how its peers go, counts capped at the mesh's other nodes.
    version: str | None = None
    counts: PathCounts | None = None


@dataclass(frozen=True, slots=True)
class ContainerRow:
    node: str  # the host's name
    node_online: bool
    name: str
    ip: str
    service: str | None  # "<service>.<project>" for a compose service
    health: str
    ports: tuple[str, ...]  # "80/tcp"
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, order=True)
class RelayedPath:
    a: str  # node names, sorted
    b: str


@dataclass(frozen=True, slots=True)
class PathCell:
    """How `a` reaches `b`, as `a` last reported it."""

    a: str  # node names
    b: str
    kind: PathKind
    handshake_at: datetime | None
    rtt_ms: float | None  # to 0.1 ms


@dataclass(frozen=True, slots=True)
class MeshView:
    revision: int
    nodes: tuple[NodeRow, ...]  # by name
    containers: tuple[ContainerRow, ...]  # by (service or name, node, name)
    relayed: tuple[RelayedPath, ...]  # sorted
    policy: str | None  # "FILE revision N"
    heartbeat_seconds: float
    # Reported paths, by (a, b): every pair up to MATRIX_MAX_NODES nodes, else only the pairs
    # reported with no handshake (agents report their worst paths first).
    cells: tuple[PathCell, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    at: datetime
    kind: str  # join, leave, online, offline, key, endpoints, container, health, path, policy
    text: str


def look(registry: Registry, relay: Relay, reports: NodeReports | None = None) -> MeshView:
    """The mesh as the registry, the relay and the nodes' reports hold it now."""
    records = registry.nodes()
    names = {n.id: n.name for n in records}
    online = {n.id for n in records if registry.online(n.id)}
    seen = {
        n.id: r
        for n in records
        if n.id in online and reports is not None and (r := reports.get(n.id)) is not None
    }
    others = max(len(records) - 1, 0)
    nodes = tuple(
        NodeRow(
            id=n.id,
            name=n.name,
            online=n.id in online,
            mesh_ip=str(n.mesh_ip),
            subnet=str(n.subnet or "none (no Docker)"),
            endpoints=tuple(f"{e.kind or 'advertised'} {e}" for e in n.endpoints),
            key=n.public_key.short(),
            rotating_to=n.next_key.short() if n.next_key is not None else None,
            tags=n.tags,
            ephemeral=n.ephemeral,
            created_at=n.created_at,
            last_seen=None if n.id in online else registry.last_seen(n.id),
            version=seen[n.id].version if n.id in seen else None,
            counts=capped(seen[n.id].counts, others) if n.id in seen else None,
        )
        for n in sorted(records, key=lambda r: r.name)
    )
    everything = len(records) <= MATRIX_MAX_NODES
    cells = tuple(
        sorted(
            (
                PathCell(
                    a=names[a],
                    b=names[peer],
                    kind=p.path,
                    handshake_at=p.handshake_at,
                    rtt_ms=None if p.rtt_ms is None else round(p.rtt_ms, 1),
                )
                for a, report in seen.items()
                for peer, p in report.peers.items()
                if peer in names and (everything or p.path == "none")
            ),
            key=lambda c: (c.a, c.b),
        )
    )
    containers = tuple(
        sorted(
            (
                ContainerRow(
                    node=names.get(c.node_id, c.node_id),
                    node_online=c.node_id in online,
                    name=c.name,
                    ip=str(c.ip),
                    service=f"{c.service}.{c.project}" if c.service and c.project else None,
                    health=c.health,
                    ports=tuple(f"{p.port}/{p.protocol}" for p in c.ports),
                    labels=c.labels,
                )
                for c in registry.containers()
            ),
            key=lambda r: (r.service or r.name, r.node, r.name),
        )
    )
    relayed = tuple(
        sorted(
            RelayedPath(*sorted((names.get(a, a), names.get(b, b))))
            for a, b in relay.pairs()
            if a in names and b in names
        )
    )
    record = registry.policy_record
    return MeshView(
        revision=registry.revision,
        nodes=nodes,
        containers=containers,
        relayed=relayed,
        policy=None if record is None else f"{record.file} revision {record.revision}",
        heartbeat_seconds=registry.heartbeat_timeout.total_seconds(),
        cells=cells,
    )


def events_between(old: MeshView, new: MeshView, at: datetime) -> list[Event]:
    """The changes from `old` to `new` an operator wants in the log, each one line."""
    events: list[Event] = []

    def add(kind: str, text: str) -> None:
        events.append(Event(at=at, kind=kind, text=text))

    before = {n.id: n for n in old.nodes}
    after = {n.id: n for n in new.nodes}
    for nid, node in after.items():
        was = before.get(nid)
        if was is None:
            add(
                "join",
                f"node {node.name} joined: {node.mesh_ip}, "
                f"containers {node.subnet or 'none (no Docker)'}",
            )
            continue
        if was.online != node.online:
            if node.online:
                add("online", f"node {node.name} is back online")
            else:
                add(
                    "offline",
                    f"node {node.name} went offline: silent for over "
                    f"{new.heartbeat_seconds:g} s, its containers withdrawn",
                )
        if node.rotating_to is not None and was.rotating_to != node.rotating_to:
            add("key", f"node {node.name} rotates its key {node.key}… → {node.rotating_to}…")
        elif was.key != node.key and node.rotating_to is None:
            add("key", f"node {node.name} switched to key {node.key}…")
        if was.endpoints != node.endpoints:
            add("endpoints", f"node {node.name} endpoints: {_list(node.endpoints)}")
    for nid, node in before.items():
        if nid not in after:
            add("leave", f"node {node.name} left the mesh or was removed")
    old_c = {(c.node, c.name): c for c in old.containers}
    new_c = {(c.node, c.name): c for c in new.containers}
    for key, box in new_c.items():
        prior = old_c.get(key)
        if prior is None:
            add("container", f"container {box.name} started on {box.node} ({box.ip})")
        elif prior.health != box.health:
            add("health", f"container {box.name} on {box.node}: {prior.health} → {box.health}")
    for key, box in old_c.items():
        if key not in new_c:
            add("container", f"container {box.name} on {box.node} is gone")
    for path in sorted(set(new.relayed) - set(old.relayed)):
        add("path", f"{path.a} ↔ {path.b} relayed through the server (no direct path)")
    for path in sorted(set(old.relayed) - set(new.relayed)):
        add("path", f"relay for {path.a} ↔ {path.b} released (idle)")
    if new.policy != old.policy and new.policy is not None:
        add("policy", f"policy set: {new.policy}")
    return events


# -- HTML -------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _list(items: Iterable[str]) -> str:
    return ", ".join(items) or "none"


def _time(at: datetime, *, age: bool) -> str:
    """A UTC time; with `age`, the page's script keeps "N s ago" next to it current."""
    stamp = f"{at:%Y-%m-%d %H:%M:%S} UTC"
    ago = f' (<time data-age datetime="{_e(at.isoformat())}"></time>)' if age else ""
    return f'<span class="when">{_e(stamp)}</span>{ago}'


def _state(online: bool) -> str:
    cls, text = ("ok", "online") if online else ("bad", "offline")
    return f'<span class="state {cls}">{text}</span>'


def _nodes(view: MeshView) -> str:
    rows = []
    for n in view.nodes:
        seen = "now" if n.online else (_time(n.last_seen, age=True) if n.last_seen else "never")
        key = _e(n.key) + "…" + (f" → {_e(n.rotating_to)}… (rotating)" if n.rotating_to else "")
        flags = [*(f"tag:{t}" for t in n.tags), *(["ephemeral"] if n.ephemeral else [])]
        rows.append(
            f'<tr class="node {"online" if n.online else "offline"}" data-node="{_e(n.name)}">'
            f"<td>{_e(n.name)}</td><td>{_state(n.online)}</td><td>{seen}</td>"
            f'<td class="version">{_e(n.version or "not reported")}</td>'
            f'<td class="peers">{_counts(n.counts)}</td>'
            f"<td>{_e(n.mesh_ip)}</td><td>{_e(n.subnet)}</td>"
            f"<td>{'<br>'.join(_e(x) for x in n.endpoints) or 'none'}</td>"
            f"<td><code>{key}</code></td><td>{_e(' '.join(flags))}</td>"
            f"<td>{_time(n.created_at, age=False)}</td></tr>"
        )
    head = (
        "<tr><th>host</th><th>state</th><th>last seen</th><th>version</th><th>peers</th>"
        "<th>mesh IP</th><th>container subnet</th><th>endpoints</th><th>key</th><th>tags</th>"
        "<th>joined</th></tr>"
    )
    body = "".join(rows) or '<tr><td colspan="11">no hosts have joined yet</td></tr>'
    return f'<table id="nodes">{head}{body}</table>'


def _counts(counts: PathCounts | None) -> str:
    if counts is None:
        return "not reported"
    parts = [
        f"{n} {kind}"
        for kind, n in (
            ("direct", counts.direct),
            ("relayed", counts.relayed),
            ("trying", counts.trying),
            ("no handshake", counts.none),
        )
        if n
    ]
    rtt = (
        f"<br>RTT median {counts.rtt_median_ms:.1f} ms, max {counts.rtt_max_ms:.1f} ms"
        if counts.rtt_median_ms is not None and counts.rtt_max_ms is not None
        else ""
    )
    return _e(", ".join(parts) or "no peers") + rtt


_CELL_CLASS = {"direct": "direct", "relayed": "relayed", "trying": "down", "none": "down"}
_CELL_TEXT = {"direct": "direct", "relayed": "relayed", "trying": "trying", "none": "no handshake"}


def _cell(cell: PathCell | None, pair: tuple[str, str], relayed: set[tuple[str, str]]) -> str:
    """One path of the matrix: as its row's host reported it, else what the server knows."""
    data = f'data-pair="{_e(pair[0])} {_e(pair[1])}"'
    if cell is None:  # the row's host has not reported this peer (yet): the relay knows
        if pair in relayed:
            return f'<td class="path relayed unreported" {data}>relayed</td>'
        return f'<td class="path unreported" {data}>not reported</td>'
    details = []
    if cell.handshake_at is not None:
        details.append(f"handshake {_time_ago(cell.handshake_at)}")
    if cell.rtt_ms is not None:
        details.append(f"RTT {cell.rtt_ms:.1f} ms")
    more = f'<br><span class="detail">{", ".join(details)}</span>' if details else ""
    return f'<td class="path {_CELL_CLASS[cell.kind]}" {data}>{_CELL_TEXT[cell.kind]}{more}</td>'


def _time_ago(at: datetime) -> str:
    """ "N s ago", kept current by the page's script."""
    return f'<time data-age datetime="{_e(at.isoformat())}"></time>'


def _paths(view: MeshView) -> str:
    relayed = {(p.a, p.b) for p in view.relayed}
    intro = (
        "<p>Each cell: how the row's host reaches the column's, as it last reported (every "
        "30 s): direct or through the server's relay, its last WireGuard handshake, and the "
        "round trip of one ping through the tunnel. Details on the host: "
        "<code>shoal status</code>, <code>shoal doctor</code>.</p>"
    )
    names = [n.name for n in view.nodes]
    if len(names) < 2:
        return intro + "<p>no pairs yet</p>"
    if len(names) > MATRIX_MAX_NODES:
        items = [f"<li>{_e(a)} ↔ {_e(b)}: relayed</li>" for a, b in sorted(relayed)]
        items += [f"<li>{_e(c.a)} → {_e(c.b)}: no handshake</li>" for c in view.cells]
        return intro + f'<ul id="relayed">{"".join(items) or "<li>no relayed pairs</li>"}</ul>'
    online = {n.name: n.online for n in view.nodes}
    reported = {(c.a, c.b): c for c in view.cells}
    head = "<tr><th></th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    rows = []
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append('<td class="self">—</td>')
                continue
            pair = (a, b) if a < b else (b, a)
            if not (online[a] and online[b]):
                cells.append(
                    f'<td class="path down" data-pair="{_e(pair[0])} {_e(pair[1])}">'
                    "host offline</td>"
                )
                continue
            cells.append(_cell(reported.get((a, b)), pair, relayed))
        rows.append(f"<tr><th>{_e(a)}</th>{''.join(cells)}</tr>")
    return intro + f'<table id="paths">{head}{"".join(rows)}</table>'


def _services(view: MeshView) -> str:
    rows = []
    for c in view.containers:
        labels = "<br>".join(f"{_e(k)}={_e(v)}" for k, v in c.labels)
        health = "host offline" if not c.node_online else c.health
        cls = "bad" if not c.node_online or c.health == "unhealthy" else "ok"
        rows.append(
            f'<tr class="container" data-container="{_e(c.name)}">'
            f"<td>{_e(c.service or c.name)}</td><td>{_e(c.name)}</td><td>{_e(c.node)}</td>"
            f'<td>{_e(c.ip)}</td><td><span class="state {cls}">{_e(health)}</span></td>'
            f"<td>{_e(_list(c.ports))}</td><td>{labels}</td></tr>"
        )
    head = (
        "<tr><th>service</th><th>container</th><th>host</th><th>IP</th><th>health</th>"
        "<th>ports</th><th>shoal labels</th></tr>"
    )
    body = "".join(rows) or '<tr><td colspan="7">no containers on the shoal network</td></tr>'
    return f'<table id="services">{head}{body}</table>'


def _events(events: Sequence[Event]) -> str:
    items = "".join(
        f'<li class="event {_e(ev.kind)}">{_time(ev.at, age=True)} '
        f'<span class="kind">{_e(ev.kind)}</span> {_e(ev.text)}</li>'
        for ev in reversed(events[-EVENTS_SHOWN:])
    )
    return f'<ul id="events">{items or "<li>nothing happened since the server started</li>"}</ul>'


def render_live(view: MeshView, events: Sequence[Event]) -> str:
    """The part of the page the script replaces on every change."""
    up = sum(n.online for n in view.nodes)
    summary = (
        f'<p id="summary">{up} of {len(view.nodes)} hosts online · '
        f"{len(view.containers)} container{'' if len(view.containers) == 1 else 's'} · "
        f"revision {view.revision} · "
        f"policy: {_e(view.policy or 'none (everything allowed)')}</p>"
    )
    return (
        f"{summary}<h2>Hosts</h2>{_nodes(view)}<h2>Paths</h2>{_paths(view)}"
        f"<h2>Services</h2>{_services(view)}<h2>Recent events</h2>{_events(events)}"
    )


_HEAD = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    "<title>shoal</title>"
    '<link rel="stylesheet" href="/dashboard/app.css">'
    '<script src="/dashboard/app.js" defer></script></head>'
)


def render_page(view: MeshView, events: Sequence[Event], version: int) -> str:
    """The whole dashboard; the script keeps `#live` current from `version` on."""
    return (
        f"{_HEAD}<body><header><h1>shoal</h1>"
        '<span id="conn" class="state">connecting…</span>'
        '<button id="logout" type="button">log out</button></header>'
        f'<main id="live" data-version="{version}">{render_live(view, events)}</main>'
        "</body></html>"
    )


def render_login() -> str:
    """The form shown to a browser without a session: it holds no data of the mesh."""
    return (
        f"{_HEAD}<body><header><h1>shoal</h1></header><main>"
        '<form id="login"><label for="token">Admin token (<code>shoal admin token create '
        "--scope read</code>, or admin.token in the server's data dir)</label>"
        '<input id="token" name="token" type="password" autocomplete="off" required>'
        '<button type="submit">open the dashboard</button>'
        '<p id="login-error" role="alert"></p></form></main></body></html>'
    )
