"""The policy section's pure parts: the 1,000-rule policy it sets and its report."""

from __future__ import annotations

from ipaddress import IPv4Address

from benchmarks.dataplane.probes import Endpoint
from benchmarks.policy import Figures, PolicyResult, policy_text, render_markdown
from shoal.lab import LabHost
from shoal.model.policy import Endpoint as PolicyEndpoint
from shoal.model.policy import decide, parse


def endpoint(ip: str) -> Endpoint:
    return Endpoint(host=LabHost.__new__(LabHost), container="c", pid=1, ip=IPv4Address(ip))


def test_the_policy_has_every_rule_and_only_the_last_allows_the_measured_flow() -> None:
    client, server = endpoint("10.42.1.2"), endpoint("10.42.2.2")
    policy = parse(policy_text(client, server), "bench-policy.yaml")
    assert len(policy.rules) == 1000
    src, dst = PolicyEndpoint(ip=client.ip), PolicyEndpoint(ip=server.ip)
    assert decide(policy, src, dst, "tcp", 5201) == policy.rules[-1]
    assert decide(policy, src, dst, "tcp", 5202) is None


def test_the_report_gives_both_figures_and_the_ratios() -> None:
    none = Figures(runs=3, tcp1_gbps=0.7, cpu_s_per_gbit=2.0, gbps_each=(0.7, 0.69, 0.71))
    rules = Figures(runs=3, tcp1_gbps=0.68, cpu_s_per_gbit=2.1, gbps_each=(0.68, 0.67, 0.7))
    result = PolicyResult(
        rules=1000,
        seconds_per_run=10,
        no_policy=none,
        with_policy=rules,
        tcp1_ratio=0.971,
        tcp1_paired_ratio=0.98,
        cpu_per_gbit_ratio=1.05,
        table_load_ms=(230.0, 240.5),
    )
    text = "\n".join(render_markdown(result))
    assert "| no policy | 0.700 | 2.00 |" in text
    assert "| 1000 rules | 0.680 | 2.10 |" in text
    assert "| ratio | 0.971 | 1.050 |" in text
    assert "own ratios 0.980 (target ≥ 0.95: met)" in text and "230, 240 ms" in text
    assert PolicyResult.model_validate_json(result.model_dump_json()) == result
