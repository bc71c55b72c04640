"""Benchmarks of shoal against the systems people would pick instead, in the project's lab.

Not part of the shoal package (not in the wheel): it measures the product from outside, through
its CLI, its server process and its `ControlClient`. Run it from a source checkout with
`make bench` (`python -m benchmarks --out docs`). One module per concern:

    runner        the sections in order, then the report (`python -m benchmarks`)
    dataplane/    container → container throughput, latency, CPU; shoal tuned by hand
    controlplane  joining a host and DNS convergence, shoal against Docker Swarm
    watch         the first DNS stage: `docker run` → the agent's container watcher
    scale/        N simulated agents (the product's ControlClient) against one real server
    swarm         Docker Swarm in the lab, as the reference
    report        benchmarks.{md,json} and the charts
    results       the typed result of a run (what benchmarks.json holds)
"""
