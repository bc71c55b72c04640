"""What agents tell about their paths (`POST /v1/report`), kept in this process's memory for the
dashboard: nothing is routed on it and nothing is stored (a restarted server shows the paths
again one report later, REPORT_SECONDS).

A report is taken at the edge as the node it came from (its signature) and trimmed to the
mesh: peers that are not nodes, the reporter itself and duplicates are dropped, counts are
capped at the number of other nodes. One node's entry is replaced by its next report, and
entries of nodes no longer in the registry are dropped (`prune`), so memory is bounded by
nodes x MAX_REPORT_PEERS. A node reporting more often than every REPORT_MIN_SECONDS is
refused (429): the cost of a report is bounded (MAX_REPORT_PEERS details), so is their rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from shoal.control.errors import TooManyRequests
from shoal.control.liveness import utcnow
from shoal.model.api import REPORT_SECONDS, NodeReport, PathCounts, PathKind

REPORT_MIN_SECONDS = REPORT_SECONDS / 3  # an agent retrying a lost report stays within it
STALE_SECONDS = 3 * REPORT_SECONDS + 5  # three reports missed: the entry is not shown


@dataclass(frozen=True, slots=True)
class PeerSeen:
    path: PathKind
    handshake_at: datetime | None  # server time, to the second (the report gave an age)
    rtt_ms: float | None


@dataclass(frozen=True, slots=True)
class NodeSeen:
    """One node's last report as the server took it."""

    at: datetime
    version: str
    counts: PathCounts
    peers: Mapping[str, PeerSeen]  # by peer node id


class NodeReports:
    """The last report of each node; `version` moves with every one taken."""

    def __init__(
        self,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._monotonic = monotonic
        self._seen: dict[str, NodeSeen] = {}
        self._taken_at: dict[str, float] = {}
        self.version = 0

    def admit(self, node_id: str) -> None:
        """429 when `node_id` reported less than REPORT_MIN_SECONDS ago (checked before the
        body is parsed: a refused report costs nothing)."""
        last = self._taken_at.get(node_id)
        elapsed = self._monotonic() - last if last is not None else REPORT_MIN_SECONDS
        if elapsed < REPORT_MIN_SECONDS:
            wait = REPORT_MIN_SECONDS - elapsed
            raise TooManyRequests(
                f"a node reports at most every {REPORT_MIN_SECONDS:g} s; retry in "
                f"{math.ceil(wait)} s",
                retry_after=wait,
            )

    def take(self, node_id: str, report: NodeReport, is_node: Callable[[str], bool]) -> None:
        """Keep `report` as `node_id`'s, trimmed to the mesh (`is_node`: a node id of it)."""
        self.admit(node_id)
        now_m = self._monotonic()
        now = self._clock().replace(microsecond=0)
        peers: dict[str, PeerSeen] = {}
        for p in report.peers:
            if p.peer == node_id or p.peer in peers or not is_node(p.peer):
                continue
            age = p.handshake_age_seconds
            peers[p.peer] = PeerSeen(
                path=p.path,
                handshake_at=None if age is None else now - timedelta(seconds=round(age)),
                rtt_ms=p.rtt_ms,
            )
        self._taken_at[node_id] = now_m
        self._seen[node_id] = NodeSeen(
            at=now, version=report.version, counts=report.counts, peers=peers
        )
        self.version += 1

    def get(self, node_id: str) -> NodeSeen | None:
        """`node_id`'s last report, unless it is older than STALE_SECONDS."""
        seen = self._seen.get(node_id)
        if seen is None or (self._clock() - seen.at).total_seconds() > STALE_SECONDS:
            return None
        return seen

    def prune(self, nodes: Collection[str]) -> None:
        """Forget the reports of nodes that are no longer in the mesh."""
        for node_id in [n for n in self._seen if n not in nodes]:
            del self._seen[node_id]
            self._taken_at.pop(node_id, None)


def capped(counts: PathCounts, others: int) -> PathCounts:
    """`counts` with each count at most `others` (the mesh's other nodes)."""
    return counts.model_copy(
        update={
            "direct": min(counts.direct, others),
            "relayed": min(counts.relayed, others),
            "trying": min(counts.trying, others),
            "none": min(counts.none, others),
        }
    )
