"""The report renders from a canned result: no lab, no timings asserted. The canned result is
written in the JSON shape of `benchmarks.json` and parsed, as an older run's file is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks.dataplane.results import SystemResult, with_ratios
from benchmarks.results import Results

DOCS = Path(__file__).resolve().parents[2] / "docs"
SETTINGS = {"runs": 3, "seconds": 10, "ping_count": 200, "tuning_runs": 2, "tuning_seconds": 5}


def _system(label: str, tcp1: float, tcp4: float, rtt: float, first: float) -> dict[str, Any]:
    return {
        "status": "ok",
        "label": label,
        "tcp1_gbps": tcp1,
        "tcp4_gbps": tcp4,
        "rtt_avg_ms": rtt,
        "rtt_p99_ms": rtt * 3,
        "first_packet_ms": first,
        "cpu_s_per_gbit": 2.0 / tcp1,
        "handshake_before_probe": None,
    }


def canned_json() -> dict[str, Any]:
    systems = {
        "baseline": _system("no overlay (static routes)", 16.0, 20.0, 0.02, 0.1),
        "handwg": _system("hand-written WireGuard (wireguard-go)", 0.70, 0.75, 0.36, 2.7),
        "swarm": _system("Docker Swarm overlay (VXLAN)", 14.0, 18.0, 0.03, 0.6),
        "swarm-encrypted": {
            "status": "not run",
            "label": "Docker Swarm overlay, encrypted (IPsec)",
            "reason": "no traffic: kernel lacks rfc4106_gcm_aes, esp4",
        },
        "nebula": {"status": "failed", "label": "Nebula", "reason": "LabError: nebula died"},
        "shoal": _system("shoal (wireguard-go)", 0.69, 0.74, 0.35, 0.5),
    }
    systems["shoal"]["handshake_before_probe"] = True
    systems["shoal"]["notes"] = ["h2: `shoal up` attempt 1 failed: refused"]
    typed, comparison = with_ratios(
        {name: SystemResult.model_validate(r) for name, r in systems.items()}
    )
    systems = {name: r.model_dump(mode="json") for name, r in typed.items()}
    cmp = comparison.model_dump(mode="json")
    tuning = {
        "settings": SETTINGS,
        "variants": [
            {"variant": "default", "description": "MTU 1420", "tcp1_gbps": 0.7},
            {"variant": "mtu-8920-jumbo", "description": "jumbo", "tcp1_gbps": 1.4},
            {"variant": "mtu-1280", "description": "small", "tcp1_gbps": 0.5},
            {"variant": "gro-off", "description": "gro", "tcp1_gbps": 0.71},
            {"variant": "txqueuelen-10000", "description": "q", "error": "ip: no such device"},
        ],
        "offloads_default": {"tcp-segmentation-offload": "on"},
    }
    for v in tuning["variants"]:
        if "tcp1_gbps" in v:
            v["ratio_to_default"] = v["tcp1_gbps"] / 0.7
    return {
        "generated": "2026-11-26 10:00 UTC",
        "command": "make bench",
        "argv": ["benchmarks"],
        "quick": False,
        "hosts": 2,
        "duration_seconds": 600.0,
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "kernel": "6.18",
            "os": "Debian 12",
            "memory_gib": 7.8,
            "date": "2026-11-26 10:00:00 UTC",
            "python": "3.11.7",
            "versions": {"wireguard-go": "wireguard-go v0.0.20220316", "nebula": None},
        },
        "sections": {
            "dataplane": {
                "status": "ok",
                "seconds": 300.0,
                "result": {
                    "status": "ok",
                    "settings": SETTINGS,
                    "systems": systems,
                    "shoal_vs_handwg": cmp,
                    "tuning": tuning,
                },
            },
            "controlplane": {
                "status": "failed",
                "reason": "LabError: dockerd did not start",
                "seconds": 0.0,
            },
            "scale": {"status": "skipped", "reason": "not selected (--only)"},
        },
    }


def canned() -> Results:
    return Results.model_validate(canned_json())


def _row(md: str, label: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_ratios_to_baseline_and_shoal_over_handwg() -> None:
    result = canned().sections.dataplane.result
    assert result is not None
    systems = result.systems
    base_vs, shoal_vs = systems["baseline"].vs_baseline, systems["shoal"].vs_baseline
    assert base_vs is not None and base_vs.tcp1_gbps == pytest.approx(1.0)
    assert shoal_vs is not None and shoal_vs.tcp1_gbps == pytest.approx(0.69 / 16.0)
    assert systems["nebula"].vs_baseline is None
    cmp = result.shoal_vs_handwg
    assert cmp.ratios.tcp1_gbps == pytest.approx(0.69 / 0.70)
    assert cmp.meets_target is True


def test_markdown_has_machine_reproduce_tables_and_reasons() -> None:
    md = report.render_markdown(canned(), {"dataplane": "benchmarks-dataplane.png"})
    assert "Test CPU, 2 cores" in md
    assert "make bench" in md
    assert "Compare systems only by the ratios within this one run." in md
    shoal = _row(md, "shoal (wireguard-go)")
    assert shoal[1] == "0.690" and shoal[2] == "0.043\u00d7"
    assert shoal[8].startswith("0.50 (tunnel up before)")
    assert _row(md, "no overlay (static routes)")[2] == "1.00\u00d7"
    assert "not run: no traffic: kernel lacks rfc4106_gcm_aes, esp4" in md
    assert "failed: LabError: nebula died" in md
    assert "**0.99\u00d7**" in md and "met" in md
    assert "![throughput ratios](benchmarks-dataplane.png)" in md
    assert "**failed**: LabError: dockerd did not start" in md
    assert "**skipped**: not selected (--only)" in md
    assert "| nebula | not installed |" in md


def test_tuning_table_and_findings() -> None:
    md = report.render_markdown(canned())
    assert _row(md, "mtu-8920-jumbo")[3] == "2.00\u00d7"
    assert "failed: ip: no such device" in _row(md, "txqueuelen-10000")[2]
    assert "- helps: mtu-8920-jumbo (2.00\u00d7)" in md
    assert "- hurts: mtu-1280 (0.71\u00d7)" in md
    assert "- no clear effect: gro-off (1.01\u00d7)" in md


def test_write_report_files(tmp_path: Path) -> None:
    written = report.write_report(canned(), tmp_path)
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["sections"]["dataplane"]["result"]["systems"]["shoal"]["tcp1_gbps"] == 0.69
    assert (tmp_path / "benchmarks.md").read_text().startswith("# Benchmarks")
    png = written["dataplane chart"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Results.model_validate(data) == canned()


def test_the_published_run_reads_back_and_renders_as_published() -> None:
    """docs/benchmarks.json (written by `make bench`) parses into the typed result and renders
    to the committed docs/benchmarks.md: the file's shape and the renderer stay in step."""
    published = Results.model_validate_json((DOCS / "benchmarks.json").read_text())
    images = {"dataplane": report.DATAPLANE_PNG, "scale": report.SCALE_PNG}
    assert report.render_markdown(published, images) == (DOCS / "benchmarks.md").read_text()
