"""The NAT section's figures render as the report shows them (the measuring needs a lab: it
runs in `make bench`)."""

from __future__ import annotations

from benchmarks.nat import NatResult, PathFigure, Throughput, render, render_markdown


def test_ratios_and_paths_render_with_their_targets() -> None:
    result = NatResult(
        paths=(PathFigure(pair="easy -> public (direct)", seconds=1.4),
               PathFigure(pair="udp-blocked -> public (TCP relay)", seconds=None)),
        throughput=(Throughput(path="direct", gbps=(0.2, 0.3, 0.25), cpu_s_per_gbit=(10.0,)),
                    Throughput(path="tcp relay", gbps=(0.1,), cpu_s_per_gbit=(20.0,), rtt_ms=2,
                               relay_cpu_s_per_gbit=0.5, agents_cpu_s_per_gbit=1.25)),
        ratios={"tcp relay": 0.4},
        round_ratios={"tcp relay": (0.4, 0.38, 0.45)},
    )  # fmt: skip
    lines = render(result)
    assert "  easy -> public (direct)                 1.4 s" in lines
    assert lines[2].endswith("none")
    assert any(line.startswith("  direct       0.250 Gbit/s") for line in lines)
    tcp = next(line for line in lines if line.startswith("  tcp relay "))
    assert tcp.endswith("relay  0.50  agents  1.25  wireguard-go     -")
    assert lines[-1] == "  tcp relay / direct: 0.40x (rounds: 0.40 0.38 0.45) (target >= 0.5x)"


def test_the_markdown_section_has_a_row_per_pair_and_path_with_round_ratios() -> None:
    result = NatResult(
        paths=(PathFigure(pair="hard <-> hard (UDP relay)", seconds=6.0),
               PathFigure(pair="udp-blocked -> public (TCP relay)", seconds=None)),
        throughput=(Throughput(path="direct", gbps=(0.3,), cpu_s_per_gbit=(7.0,), rtt_ms=0.4,
                               wireguard_cpu_s_per_gbit=5.0),
                    Throughput(path="udp relay", gbps=(0.2,), cpu_s_per_gbit=(8.0,), rtt_ms=0.8,
                               relay_cpu_s_per_gbit=0.6)),
        ratios={"udp relay": 0.7},
        round_ratios={"udp relay": (0.7, 0.68)},
    )  # fmt: skip
    lines = render_markdown(result)
    assert "| hard <-> hard | UDP relay | 6.0 |" in lines
    assert "| udp-blocked -> public | TCP relay | none |" in lines
    assert "| direct | 0.300 | 1.00 | 0.400 | - | - | 5.00 | 7.00 |" in lines
    assert "| udp relay | 0.200 | 0.70 (0.70, 0.68) | 0.800 | 0.60 | - | - | 8.00 |" in lines
