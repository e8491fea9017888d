"""The `sharpe-rl` command line: an application on top of the flows (`flows/`) and the library (`sharpe_rl/`).

`cli.app` holds the Typer app and lists every command; each command group has its module (`data`, `policy`,
`experiment`, `runs`, `serve`), what they print is `render`, the options that set a run's settings come from the
settings' models through `options`, and `inputs` checks what a command is given before it starts anything.
Commands import what they need (torch, the Docker SDK, Prefect and the flows) inside themselves, so that
`sharpe-rl --help` and the light commands start fast.
"""

import os

# Torch's OpenMP threads spin while they wait for work. On a machine that is busy with anything
# else (the sandbox image's build beside `build-policy` in `make run`, experiments in containers),
# two spinning threads on two cores fight the other processes and each other: a build step took
# 4-9 times longer (bench numbers in docs/performance.md). Passive threads sleep instead. It has
# to be in the environment before torch loads, which the commands do lazily.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
