"""The lab's state file: everything a lab created, so another process can find and remove it.

It is written before each thing is made (intent first), so a create that dies midway leaves a
record `Lab.destroy` can undo; every field has a default so a partial file still loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "lab.json"


@dataclass
class ProcRecord:
    """A process the lab started. `start` (clock ticks since boot) guards against PID reuse."""

    pid: int
    start: int | None
    kind: str  # "dockerd" | "server" | "upstream-dns" | "process"
    what: str
    host: str | None = None


@dataclass
class HostRecord:
    name: str  # "h1"
    index: int  # 1 -> underlay 192.0.2.11, docker bridge 172.30.1.1/24
    netns: str
    underlay_ip: str
    veth: str  # its end in the underlay namespace (or in its NAT router's)
    nat: str | None = None  # NAT kind (shoal.lab.nat) when the host sits behind a router
    router: str | None = None  # that router's name
    public_ip: str | None = None  # that router's underlay address


@dataclass
class LabState:
    name: str
    root: str
    owner_pid: int
    owner_start: int | None
    persistent: bool = False
    created_at: float = 0.0
    netns: list[str] = field(default_factory=list)
    hosts: list[HostRecord] = field(default_factory=list)
    procs: list[ProcRecord] = field(default_factory=list)
    server_url: str | None = None
    server_pid: int | None = None
    upstream_dns_pid: int | None = None
    token: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        raw: dict[str, Any] = json.loads(text)
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in raw.items() if k in known}
        data["hosts"] = [HostRecord(**h) for h in raw.get("hosts", [])]
        data["procs"] = [ProcRecord(**p) for p in raw.get("procs", [])]
        return cls(**data)

    def save(self, directory: Path) -> None:
        """Write atomically: a reader never sees half a file."""
        tmp = directory / f".{STATE_FILE}.{os.getpid()}"
        tmp.write_text(self.to_json())
        os.replace(tmp, directory / STATE_FILE)
