"""Fakes, builders and a manual clock for tests; production code never imports this package
(an import contract in pyproject.toml checks it).

    builders   small model values (`netmap(1, [2, 3])`)
    fakes      stateful fakes of every host subsystem, each with a readable `dump()`
    clock      `ManualClock`: time moves only when the test advances it
    systemctl  a fake `systemctl` keeping systemd's state, for the agent's unit
"""
