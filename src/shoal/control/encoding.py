"""The JSON of the maps the server sends, spliced from records encoded once per change.

A registration reply carries a full map of N peers and a catch-up delta up to N. pydantic
spends about 10 µs turning one node record into JSON (its IP addresses go through Python's
`str`), so at 5,000 nodes every such reply cost the server 50 ms of encoding, almost all of it
for records that had not changed since the last reply. `MapEncoder` encodes each node and
container record once (again only when the registry replaces it, that is when it changes)
and splices the cached pieces into each reply. A delta that wakes every long-poll at once is
the same object for all of them and is encoded once for all.

The output parses (`model_validate_json`) to a model equal to the one encoded; only the order
of an object's keys may differ from pydantic's own `model_dump_json`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from operator import attrgetter
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from shoal.model.api import RegisterResponse
from shoal.model.netmap import Container, MapUpdate, NetworkMap, Node

MIN_RECORDS_KEPT = 4096  # per kind; grows to twice the largest map encoded


class Record(Protocol):
    def model_dump_json(self) -> str: ...


R = TypeVar("R", bound=Record)


class RecordPieces(Generic[R]):
    """The JSON of records by key, reused while the registry hands out the same object.

    Two generations bound the memory: records asked for go into the young one; when it is
    full it becomes the old one and the records still in use move back on their next use, so
    records of removed nodes and stopped containers are dropped after two generations.
    """

    def __init__(self, key: Callable[[R], Hashable]) -> None:
        self._key = key
        self._young: dict[Hashable, tuple[R, bytes]] = {}
        self._old: dict[Hashable, tuple[R, bytes]] = {}
        self._limit = MIN_RECORDS_KEPT

    def encode(self, record: R) -> bytes:
        key = self._key(record)
        hit = self._young.get(key)
        if hit is not None and hit[0] is record:
            # The common case, once per peer in every full map: nothing to write.
            return hit[1]
        hit = self._old.get(key)
        if hit is None or hit[0] is not record:
            hit = (record, record.model_dump_json().encode())
        self._young[key] = hit
        if len(self._young) >= self._limit:
            self._old, self._young = self._young, {}
        return hit[1]

    def array(self, records: Sequence[R]) -> bytes:
        # A map's records must all fit in one generation, or each map would evict its own.
        self._limit = max(self._limit, 2 * len(records))
        encode = self.encode
        return b"[" + b",".join([encode(r) for r in records]) + b"]"


class MapEncoder:
    def __init__(self, updates_kept: int = 16) -> None:
        self._nodes: RecordPieces[Node] = RecordPieces(attrgetter("id"))
        self._containers: RecordPieces[Container] = RecordPieces(attrgetter("key"))
        self._updates_kept = updates_kept
        # Keyed by id(); holding the update keeps its id from being reused while cached.
        self._updates: OrderedDict[int, tuple[MapUpdate, bytes]] = OrderedDict()
        self._lines: OrderedDict[int, tuple[MapUpdate, bytes]] = OrderedDict()
        self._chunks: OrderedDict[int, tuple[MapUpdate, bytes]] = OrderedDict()

    def network_map(self, netmap: NetworkMap) -> bytes:
        return spliced(
            netmap,
            {
                "peers": self._nodes.array(netmap.peers),
                "containers": self._containers.array(netmap.containers),
            },
        )

    def update(self, update: MapUpdate) -> bytes:
        return self._cached(self._updates, update, self._encode)

    def line(self, update: MapUpdate) -> bytes:
        """`update(update)` and a newline: a frame of a netmap stream, built once per update
        like its JSON, so every stream a change wakes writes the very same bytes."""
        # Not through `update`'s cache: a stream's frame is kept once, as a line (a large
        # full map twice over was the price).
        return self._cached(self._lines, update, lambda u: self._body(u) + b"\n")

    def chunk(self, update: MapUpdate) -> bytes:
        """`line(update)` as one chunk of a chunked HTTP/1.1 body (what `StreamResponse.write`
        sends for it), built once per update: what a change pushes to every stream."""
        return self._cached(self._chunks, update, lambda u: _chunked(self.line(u)))

    def _body(self, update: MapUpdate) -> bytes:
        hit = self._updates.get(id(update))
        return hit[1] if hit is not None and hit[0] is update else self._encode(update)

    def _cached(
        self,
        cache: OrderedDict[int, tuple[MapUpdate, bytes]],
        update: MapUpdate,
        make: Callable[[MapUpdate], bytes],
    ) -> bytes:
        """`make(update)`, kept in `cache` for the last `updates_kept` updates."""
        hit = cache.get(id(update))
        if hit is not None and hit[0] is update:
            return hit[1]
        made = make(update)
        cache[id(update)] = (update, made)
        if len(cache) > self._updates_kept:
            cache.popitem(last=False)
        return made

    def _encode(self, update: MapUpdate) -> bytes:
        return spliced(
            update,
            {
                "full": b"null" if update.full is None else self.network_map(update.full),
                "peers_changed": self._nodes.array(update.peers_changed),
                "containers_changed": self._containers.array(update.containers_changed),
            },
        )

    def register_response(self, response: RegisterResponse) -> bytes:
        return spliced(response, {"netmap": self.network_map(response.netmap)})


def spliced(model: BaseModel, encoded: Mapping[str, bytes]) -> bytes:
    """`model` as a JSON object whose fields named in `encoded` are given already encoded."""
    head = model.model_dump_json(exclude=set(encoded)).encode()
    members = b",".join(b'"' + name.encode() + b'":' + value for name, value in encoded.items())
    if head == b"{}":
        return b"{" + members + b"}"
    return head[:-1] + b"," + members + b"}"


def _chunked(data: bytes) -> bytes:
    """`data` framed as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%b\r\n" % (len(data), data)
