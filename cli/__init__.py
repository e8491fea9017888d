"""The `sharpe-rl` command line: an application on top of the flows (`flows/`) and the library (`sharpe_rl/`).

`cli.app` holds the Typer app and lists every command; each command group has its module (`data`, `policy`,
`experiment`, `runs`, `serve`), what they print is `render`, the options that set a run's settings come from the
settings' models through `options`, and `inputs` checks what a command is given before it starts anything.
Commands import what they need (torch, the Docker SDK, Prefect and the flows) inside themselves, so that
`sharpe-rl --help` and the light commands start fast.
"""
