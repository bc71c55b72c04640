"""The benchmark report: `benchmarks.json` (everything), `benchmarks.md` (for people), PNG charts.

`render_markdown` is pure (the tests feed it a canned `Results`); `machine_info` and
`write_report` do the I/O. Each section renders its own part (`dataplane.render`,
`controlplane.render_markdown`, `scale.render`).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from pydantic import ValidationError

from benchmarks import controlplane, nat, policy
from benchmarks.dataplane import render as dataplane_render
from benchmarks.results import Machine, Results, SectionName
from benchmarks.scale import render as scale_render
from benchmarks.textfmt import num, table
from shoal.lab import LabError

REPRODUCE = "make bench"
REPRODUCE_CLI = ".venv/bin/python -m benchmarks --out docs"
JSON_NAME = "benchmarks.json"
MD_NAME = "benchmarks.md"
DATAPLANE_PNG = "benchmarks-dataplane.png"
SCALE_PNG = "benchmarks-scale.png"
NOISE_NOTE = (
    "This machine is shared (other engineers ran tests on its {cores} cores during the run): "
    "absolute figures are noisy and vary by 10 % or more between runs. Compare systems only by "
    "the ratios within this one run."
)
_VERSIONS = {
    "wireguard-go": ["wireguard-go", "--version"],
    "dockerd": ["dockerd", "--version"],
    "docker CLI": ["docker", "--version"],
    "nebula": ["nebula", "-version"],
    "iperf3": ["iperf3", "--version"],
    "busybox": ["busybox"],
}


# -- the machine ----------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0].strip() if text else None


def _field(path: str, prefix: str) -> str | None:
    """The rest of the first line of `path` starting with `prefix`; None if none or unreadable."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :]
    except OSError:
        pass
    return None


def machine_info() -> Machine:
    """CPU model, cores, kernel, memory, date and the versions of the tools measured."""
    cpu = _field("/proc/cpuinfo", "model name")
    mem_kib = _field("/proc/meminfo", "MemTotal:")
    os_name = _field("/etc/os-release", "PRETTY_NAME=")
    return Machine(
        cpu=cpu.split(":", 1)[1].strip() if cpu else "unknown",
        cores=os.cpu_count(),
        kernel=platform.release(),
        os=os_name.strip('"') if os_name else "unknown",
        memory_gib=round(int(mem_kib.split()[0]) / 1024**2, 1) if mem_kib else None,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        python=platform.python_version(),
        versions={name: _first_line(argv) for name, argv in _VERSIONS.items()},
    )


# -- the report -----------------------------------------------------------------------------


def render_markdown(results: Results, images: dict[str, str] | None = None) -> str:
    """The whole report as markdown; `images` maps a section to its PNG's relative path."""
    images = images or {}
    m = results.machine
    kept = results.kept()
    quick = ", **quick mode: smoke-test durations, not figures**" if results.quick else ""
    if kept:
        intro = (
            "shoal side by side with what people would pick instead, on one machine; each "
            "section measured in one run, dated under its heading (the last run: "
            f"{results.generated}{quick}; {', '.join(kept)} kept from earlier runs)."
        )
    else:
        intro = (
            "shoal side by side with what people would pick instead, measured in one run on "
            f"one machine ({results.generated}{quick})."
        )
    minutes = num(results.duration_seconds / 60, 1)
    took = f"The last run took {minutes} min." if kept else f"The whole run took {minutes} min."
    out = [
        "# Benchmarks",
        "",
        intro,
        "",
        "> " + NOISE_NOTE.format(cores=m.cores or "?"),
        "",
        "## Machine",
        "",
        *table(
            ["", ""],
            [
                ["CPU", f"{m.cpu}, {m.cores or '?'} cores"],
                ["memory", f"{m.memory_gib or '?'} GiB"],
                ["OS / kernel", f"{m.os} / {m.kernel}"],
                *[[k, v or "not installed"] for k, v in m.versions.items()],
                ["lab", f"{results.hosts} hosts, network namespaces on one machine"],
            ],
            "ll",
        ),
        "",
        "## Reproduce",
        "",
        f"`{REPRODUCE}` (as root on Debian 12, from a source checkout; it runs "
        f"`{REPRODUCE_CLI}`). `--quick` for a smoke test, "
        "`--only dataplane|controlplane|scale|policy|nat` for one section (the others are "
        f"kept as the report there holds them, with their dates). {took}",
    ]
    s = results.sections
    out += ["", "## Data plane", "", *_measured(results, "dataplane")]
    if s.dataplane.result is not None:
        out += dataplane_render.render_markdown(s.dataplane.result, images.get("dataplane"))
    out += _section_end(s.dataplane.status, s.dataplane.reason, s.dataplane.seconds)
    out += ["", "## Control plane", "", *_measured(results, "controlplane")]
    if s.controlplane.result is not None:
        out += controlplane.render_markdown(s.controlplane.result).rstrip("\n").splitlines()
    out += _section_end(s.controlplane.status, s.controlplane.reason, s.controlplane.seconds)
    out += ["", "## Server scale", "", *_measured(results, "scale")]
    if s.scale.result is not None:
        out += scale_render.render_markdown(s.scale.result).rstrip("\n").splitlines()
        if "scale" in images:
            out += ["", f"![scale]({images['scale']})"]
    out += _section_end(s.scale.status, s.scale.reason, s.scale.seconds)
    out += ["", "## Access-control policy", "", *_measured(results, "policy")]
    if s.policy.result is not None:
        out += policy.render_markdown(s.policy.result)
    out += _section_end(s.policy.status, s.policy.reason, s.policy.seconds)
    if s.nat.status != "not run":  # runs from before the section have none
        out += ["", "## NAT traversal and relays (`--only nat`)", "", *_measured(results, "nat")]
        if s.nat.result is not None:
            out += nat.render_markdown(s.nat.result)
        out += _section_end(s.nat.status, s.nat.reason, s.nat.seconds)
    return "\n".join(out) + "\n"


def _measured(results: Results, name: SectionName) -> list[str]:
    """A section's date when the report holds sections of more than one run."""
    if not results.kept():
        return []
    when = results.measured(name)
    earlier = " (an earlier run, kept)" if name in results.kept() else " (the last run)"
    return [f"_Measured {when}{earlier}._", ""]


def _section_end(status: str, reason: str | None, seconds: float | None) -> list[str]:
    if status != "ok":
        return [f"**{status}**: {reason or 'no reason recorded'}"]
    return ["", f"_Section time: {num(seconds, 0)} s._"]


def read_report(out: Path) -> Results | None:
    """The report a run writes over in `out` (None: there is none yet).

    Raises `LabError` when it does not parse: a run of some sections would lose the others'
    figures."""
    path = out / JSON_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LabError(f"cannot read the report to keep its other sections: {exc}") from exc
    try:
        return Results.model_validate_json(text)
    except ValidationError as exc:
        raise LabError(
            f"{path} is not a benchmark report this code reads ({exc.error_count()} error(s),"
            f" first: {exc.errors()[0]['msg']}); run all sections, or move it away first"
        ) from exc


def write_report(results: Results, out: Path) -> dict[str, Path]:
    """Write JSON, charts and markdown into `out`; the paths written, by kind."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    images: dict[str, str] = {}
    dp, scale = results.sections.dataplane.result, results.sections.scale.result
    if dp is not None:
        png = dataplane_render.chart(dp, out / DATAPLANE_PNG)
        if png is not None:
            images["dataplane"] = png.name
            written["dataplane chart"] = png
    if scale is not None:
        png = scale_render.chart(scale, out / SCALE_PNG)
        if png is not None:
            images["scale"] = png.name
            written["scale chart"] = png
    written["json"] = out / JSON_NAME
    written["json"].write_text(results.model_dump_json(indent=2) + "\n")
    written["markdown"] = out / MD_NAME
    written["markdown"].write_text(render_markdown(results, images))
    return written
