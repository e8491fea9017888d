"""sharpe-rl's library: data, sandbox, scoring, policy, PPO and analysis, with no Prefect in it (flows/ orchestrate it).

Importing the package sets one thing for the whole process: torch's OpenMP threads sleep rather than spin while
they wait for work. On a machine busy with anything else (experiments in containers beside a night's update, the
image build beside `build-policy`, a test suite beside a night) their default, a short spin before they sleep, makes
them fight the other processes and each other: beside a policy evaluation, a step of the tiny policy's build took 233
ms against 97 with sleeping threads (bench/build_step.py) and the learning test's fixture 1,003 s against 264.
Every entry point (the CLI, the flows on a thread or a Dask worker, the tests' conftest) imports this package before
torch loads, which is when OpenMP reads the setting (tests/test_layering.py); a setting of the user's own wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
