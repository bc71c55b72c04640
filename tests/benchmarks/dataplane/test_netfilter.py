"""The netfilter attribution of `perf script` samples (no lab: a recorded excerpt)."""

from __future__ import annotations

from collections import Counter

from benchmarks.dataplane.netfilter import SAMPLE_HZ, Profiled, attribute, by_function, samples
from benchmarks.dataplane.parity import Run

SCRIPT = """\
wireguard-go  2899 [000] 57285.349933:     500250 cpu-clock:
\tffffffff81f3f2db nft_do_chain+0x1db ([kernel.kallsyms])
\tffffffff81f3f2db nft_do_chain_inet+0x1b ([kernel.kallsyms])
\tffffffff81f2af93 nf_hook_slow+0x43 ([kernel.kallsyms])
\tffffffff81fff18e ip_local_deliver+0xde ([kernel.kallsyms])
\tffffffff82000651 ip_rcv_finish+0x91 ([kernel.kallsyms])

wireguard-go  2842 [001] 57285.350010:     500250 cpu-clock:
\tffffffff82203249 __nf_conntrack_find_get+0x19 ([kernel.kallsyms])
\tffffffff82203249 nf_conntrack_in+0x19 ([kernel.kallsyms])
\tffffffff81f2af93 nf_hook_slow+0x43 ([kernel.kallsyms])
\tffffffff81fff18e ip_rcv+0xde ([kernel.kallsyms])

iperf3  2842 [001] 57285.350010:     500250 cpu-clock:
\tffffffff82203249 _copy_to_iter+0x19 ([kernel.kallsyms])
\t            408e [unknown] (/usr/bin/iperf3)
"""


def test_samples_in_netfilter_are_put_down_to_their_hook_and_function() -> None:
    shares, total = attribute(samples(SCRIPT))
    assert total == 3
    assert shares == {"input: nft_do_chain_inet": 1, "prerouting: nf_conntrack_in": 1}


def test_every_sample_counts_for_its_process_and_the_function_it_was_in() -> None:
    idle = "\nswapper     0 [001] 1.0: 500250 cpu-clock:\n\tffff x+0x1 (k)\n"
    assert by_function(samples(SCRIPT + idle)) == {
        "wireguard-go: nft_do_chain": 1,
        "wireguard-go: __nf_conntrack_find_get": 1,
        "iperf3: _copy_to_iter": 1,
        "idle: x": 1,
    }


def test_cpu_per_gbit_is_the_samples_time_over_what_moved_while_sampled() -> None:
    # 500 Mbit/s sampled for 8 s: 4 Gbit; SAMPLE_HZ samples are one CPU second.
    run = Run(mbps=500, gbit=5, machine_s=1, path_s=1)
    got = Profiled(run, Counter(), 0, Counter({"iperf3: f": SAMPLE_HZ * 2}), window=8)
    assert got.ms_per_gbit("iperf3: f") == 500
