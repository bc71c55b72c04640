"""Path selection: which of a peer's endpoints this host's WireGuard uses, and why.

Pure: the agent feeds it the netmap, the handshake times the data plane reports and the time;
it answers one endpoint per peer (what `plan_host` configures) and a path description for
`shoal status`.

Candidates per peer, best first (`candidates`):
  1. its LAN endpoints when both hosts sit behind the same NAT (same public address): "lan";
  2. its public endpoint: "direct" when that is the peer's own address (no NAT there), else
     "public" (its NAT's mapping; both sides send, so WireGuard's own handshakes open both
     NATs: the hole punch). Behind a symmetric NAT the port differs per destination: no
     endpoint is configured, the peer's handshakes reach us and WireGuard follows them;
  3. its LAN endpoints otherwise, last (a private network the two may share without NAT).
Either side without UDP (it advertises a "relay" endpoint, the TCP relay it listens on):
that relay is the only candidate, reached through a loopback endpoint of this agent
(`shoal.agent.tcprelay`): "relayed via tcp <relay> (UDP blocked at <host>)".
Both sides symmetric (each NAT gives every destination a new port) or a peer with no usable
endpoint: no direct candidate. When no direct candidate is left to try, the agent asks the
server for a relay port (`shoal.control.relay`) and adds it as the last candidate: "relayed via
udp <server:port> (<why>)"; without one, "no path: <why>, relay not available".

A candidate is kept while handshakes complete; one that has not given a handshake within
`SWITCH_SECONDS` of being chosen is replaced by the next (round robin), so a pair converges in
a few seconds per wrong candidate. WireGuard roams by itself to wherever the peer's
authenticated packets come from; that is never undone here while handshakes are fresh.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from shoal.model.api import PathKind
from shoal.model.keys import PublicKey
from shoal.model.netmap import Endpoint, Node

# wireguard-go retries a handshake every 5 s: a candidate gets one retry plus a round trip.
SWITCH_SECONDS = 6.0
# A session lives 180 s past its handshake (REJECT_AFTER_TIME); older means no session.
HANDSHAKE_FRESH_SECONDS = 180.0
NO_RELAY = "relay not available"
RELAY_RETRY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Candidate:
    endpoint: Endpoint
    why: str  # "lan" | "public" | "direct" | "relayed"
    # A symmetric NAT's port is per destination: the one the server saw is wrong for us.
    # Configure no endpoint and let the peer's handshakes (it has ours) open the path:
    # WireGuard follows them, and setting the server's port would undo that.
    passive: bool = False


def _public(node: Node) -> Endpoint | None:
    return next((e for e in node.endpoints if e.kind in ("public", "symmetric")), None)


def _relay(node: Node) -> Endpoint | None:
    return next((e for e in node.endpoints if e.kind == "relay"), None)


def candidates(me: Node, peer: Node) -> tuple[tuple[Candidate, ...], str | None]:
    """The peer's candidates, best first, and the reason when there are none (or, with a
    TCP relay as the only one, why)."""
    tcp = _relay(peer) or _relay(me)
    if tcp is not None:
        blocked = [n.name for n in (me, peer) if _relay(n) is not None]
        # The peer's own relay first: it listens there (DERP's "home relay").
        return (Candidate(tcp, "relayed"),), f"UDP blocked at {' and '.join(blocked)}"
    mine, theirs = _public(me), _public(peer)
    lan = [e for e in peer.endpoints if e.kind == "lan"]
    unchecked = [e for e in peer.endpoints if e.kind is None]
    out: list[Candidate] = []
    same_nat = mine is not None and theirs is not None and mine.host == theirs.host
    if same_nat:
        out += [Candidate(e, "lan") for e in lan]
    if (
        theirs is not None
        and theirs.kind == "symmetric"
        and mine is not None
        and mine.kind == "symmetric"
        and not same_nat
    ):
        return tuple(out), "symmetric NAT on both sides"
    if theirs is not None and not same_nat:
        why = "public" if lan or theirs.kind == "symmetric" else "direct"
        out.append(Candidate(theirs, why, passive=theirs.kind == "symmetric"))
    out += [Candidate(e, "direct") for e in unchecked]
    if not same_nat:
        out += [Candidate(e, "lan") for e in lan]
    if not out:
        return (), f"{peer.name} has no endpoint yet"
    return tuple(out), None


@dataclass(frozen=True, slots=True)
class PeerPath:
    """What `shoal status` shows for one peer."""

    endpoint: Endpoint | None
    description: str  # "direct" | "lan" | "public" | "trying lan (2/3)" | "no path: ..."
    # The path in one word: "relayed" once a handshake completed over a relay, "direct" over
    # any other candidate, "trying" while candidates are left, "none" when none worked.
    kind: PathKind = "none"
    # The relay in use when relayed (or tried when trying): a port of the server's UDP relay,
    # or a TCP relay (an endpoint of kind "relay"); None otherwise.
    relay: Endpoint | None = None
    why: str | None = None  # why relayed, or why there is no path


@dataclass
class _State:
    cands: tuple[Candidate, ...]
    reason: str | None
    index: int = 0
    since: float = 0.0  # unix seconds the current candidate was chosen
    up: bool = False
    tried: set[int] = field(default_factory=set)


class PathSelector:
    """Per-peer candidate state; `update` once a few seconds (see the module docstring)."""

    def __init__(
        self,
        switch_seconds: float = SWITCH_SECONDS,
        tcp_local: Callable[[PublicKey, Endpoint], Endpoint] | None = None,
    ) -> None:
        """`tcp_local(peer, relay)`: the loopback endpoint that carries `peer`'s datagrams
        over the TCP relay `relay` (None: no TCP relay client, such candidates get none)."""
        self.switch_seconds = switch_seconds
        self._tcp_local = tcp_local
        self._own: tuple[Endpoint, ...] | None = None
        self._peers: dict[PublicKey, _State] = {}
        self._relays: dict[PublicKey, tuple[Endpoint, float]] = {}  # with when granted

    def set_own(self, endpoints: tuple[Endpoint, ...]) -> bool:
        """This host's endpoints as its last probe found them; they stand in for what the
        netmap says about this node (the server does not wake a node for its own change, so
        its netmap lags). True when they changed (the caller plans again)."""
        changed = endpoints != self._own
        self._own = endpoints
        return changed

    def own(self) -> tuple[Endpoint, ...]:
        """This host's endpoints as last set (empty before the first probe)."""
        return self._own or ()

    def set_relay(self, key: PublicKey, endpoint: Endpoint, now: float) -> None:
        """Add the server's relay port for peer `key` as its last candidate (next update)."""
        self._relays[key] = (endpoint, now)

    def needs_relay(self, key: PublicKey, now: float) -> bool:
        """Every candidate of `key` was tried without a handshake (or there is none), and no
        relay was granted, or the granted one failed too and was granted RELAY_RETRY_SECONDS
        ago (the server may have restarted and given the pair new ports)."""
        st = self._peers.get(key)
        if st is None or not (not st.cands or len(st.tried) >= len(st.cands)):
            return False
        if any(c.endpoint.kind == "relay" for c in st.cands):
            return False  # no UDP on one side: a UDP relay cannot help
        granted = self._relays.get(key)
        return granted is None or now - granted[1] >= RELAY_RETRY_SECONDS

    def update(
        self,
        me: Node,
        peers: Sequence[Node],
        handshakes: Mapping[PublicKey, float | None] | None,
        now: float,
    ) -> bool:
        """Take the newest netmap and handshake times (unix seconds); True when an endpoint
        to configure changed (the caller plans and applies again). Without `handshakes`
        (planning a new netmap) peers are only added, reset or dropped, never advanced."""
        changed = False
        seen: set[PublicKey] = set()
        if self._own is not None:
            me = me.model_copy(update={"endpoints": self._own})
        for peer in peers:
            seen.add(peer.public_key)
            cands, reason = candidates(me, peer)
            relay = self._relays.get(peer.public_key)
            if relay is not None:
                cands = (*cands, Candidate(relay[0], "relayed"))
            st = self._peers.get(peer.public_key)
            if st is None or st.cands != cands or st.reason != reason:
                before = self.endpoint(peer.public_key)
                st = self._peers[peer.public_key] = _State(cands, reason, since=now)
                changed |= self.endpoint(peer.public_key) != before
                continue
            if handshakes is None:
                continue
            last = handshakes.get(peer.public_key)
            st.up = last is not None and now - last < HANDSHAKE_FRESH_SECONDS
            if st.up or not st.cands or now - st.since < self.switch_seconds:
                continue
            st.tried.add(st.index)
            st.since = now
            if len(st.cands) > 1:
                st.index = (st.index + 1) % len(st.cands)
                changed = True
        for key in set(self._peers) - seen:
            del self._peers[key]
            self._relays.pop(key, None)
        return changed

    def endpoint(self, key: PublicKey) -> str | None:
        """The endpoint to configure for peer `key` ("ip:port"), None for none."""
        st = self._peers.get(key)
        if st is None or not st.cands or st.cands[st.index].passive:
            return None
        cand = st.cands[st.index]
        if cand.endpoint.kind == "relay":
            return None if self._tcp_local is None else str(self._tcp_local(key, cand.endpoint))
        return str(cand.endpoint)

    def tcp_relayed(self) -> dict[PublicKey, Endpoint]:
        """The peers whose current candidate is a TCP relay, with that relay."""
        return {
            key: st.cands[st.index].endpoint
            for key, st in self._peers.items()
            if st.cands and st.cands[st.index].endpoint.kind == "relay"
        }

    def endpoints(self) -> dict[PublicKey, str | None]:
        return {key: self.endpoint(key) for key in self._peers}

    def path(self, key: PublicKey) -> PeerPath:
        st = self._peers.get(key)
        if st is None:
            return PeerPath(None, "unknown")
        if not st.cands:
            return PeerPath(None, f"no path: {st.reason}, {NO_RELAY}", why=st.reason)
        cand = st.cands[st.index]
        if st.up:
            if cand.why == "relayed":
                why = st.reason or "no direct handshake"
                via = "tcp" if cand.endpoint.kind == "relay" else "udp"
                return PeerPath(
                    cand.endpoint,
                    f"relayed via {via} {cand.endpoint} ({why})",
                    kind="relayed",
                    relay=cand.endpoint,
                    why=why,
                )
            return PeerPath(cand.endpoint, cand.why, kind="direct")
        if len(st.tried) >= len(st.cands):
            names = ", ".join(f"{c.why} {c.endpoint}" for c in st.cands)
            relay = "relay tried" if key in self._relays else NO_RELAY
            why = f"no handshake over any candidate ({names})"
            return PeerPath(cand.endpoint, f"no path: {why}, {relay}", why=why)
        return PeerPath(
            cand.endpoint,
            f"trying {cand.why} ({st.index + 1}/{len(st.cands)})",
            kind="trying",
            relay=cand.endpoint if cand.why == "relayed" else None,
            why=st.reason if cand.why == "relayed" else None,
        )
