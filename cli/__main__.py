"""`python -m cli ...`: the `sharpe-rl` command without its console script (e.g. from a checkout)."""

from cli.app import main

main()
