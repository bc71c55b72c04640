"""A fake `systemctl` for tests of `shoal.agent.systemd`: a script that keeps what systemd
would know (loaded, enabled and active units, the system state, units it refuses) in a JSON
file beside it, and a fake /proc whose PID 1 is systemd (or not)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from shoal.agent.systemd import Systemd

FAKE_SYSTEMCTL = """\
import json, os, sys
from pathlib import Path
here = Path(sys.argv[0]).parent
state_file = here / "state.json"
state = json.loads(state_file.read_text()) if state_file.exists() else {
    "system": "running", "loaded": [], "enabled": [], "active": [], "refuse": []}
args = sys.argv[1:]
if args == ["is-system-running"]:
    print(state["system"]); sys.exit(0 if state["system"] == "running" else 1)
if args[-1] in state["refuse"]:
    print(f"Failed to {args[0]} unit {args[-1]}: Access denied", file=sys.stderr); sys.exit(1)
if args == ["daemon-reload"]:
    state["loaded"] = sorted(os.listdir(here / "units"))
elif args[:2] == ["enable", "--now"]:
    assert args[2] in state["loaded"], "enable before daemon-reload"
    state["enabled"].append(args[2]); state["active"].append(args[2])
elif args[0] == "restart":
    assert args[1] in state["active"], "restart of a unit not started"
    state.setdefault("restarted", []).append(args[1])
elif args[:2] == ["disable", "--now"]:
    state["enabled"].remove(args[2]); state["active"].remove(args[2])
else:
    sys.exit(f"fake systemctl: unexpected {args}")
state_file.write_text(json.dumps(state))
"""
DEFAULT_STATE: dict[str, object] = {
    "system": "running",
    "loaded": [],
    "enabled": [],
    "active": [],
    "refuse": [],
}


@dataclass
class FakeSystemd:
    """`systemd` is the real `Systemd`, pointed at the fake; `state()` is what systemd knows."""

    systemd: Systemd
    dir: Path

    def state(self) -> dict[str, list[str]]:
        path = self.dir / "state.json"
        state: dict[str, list[str]] = json.loads(path.read_text()) if path.exists() else {}
        return state

    def set(self, **changes: object) -> None:
        state = {**DEFAULT_STATE, **self.state(), **changes}
        (self.dir / "state.json").write_text(json.dumps(state))


def fake_systemd(root: Path, pid1: str = "systemd") -> FakeSystemd:
    """A fake systemd in `root` (units in root/units); `pid1` is /proc/1/comm."""
    root.mkdir(parents=True, exist_ok=True)
    script = root / "systemctl"
    script.write_text(f"#!{sys.executable}\n{FAKE_SYSTEMCTL}")
    script.chmod(0o755)
    (root / "units").mkdir()
    (root / "proc" / "1").mkdir(parents=True)
    (root / "proc" / "1" / "comm").write_text(f"{pid1}\n")
    return FakeSystemd(Systemd(str(script), unit_dir=root / "units", proc=root / "proc"), root)
