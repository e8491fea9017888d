"""Dependencies flow one way, cli -> flows -> tasks -> sharpe_rl: the library never imports Prefect, the flows or
the command line, so every piece can be used and tested without an orchestrator."""

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sharpe_rl
from sharpe_rl.sandbox.image import HARNESS_FILES

LIBRARY = Path(sharpe_rl.__file__).parent
PROJECT = LIBRARY.parent
#: The top-level packages each package must not import, anywhere in its modules (inside functions too).
FORBIDDEN = {
    "sharpe_rl": {"prefect", "prefect_dask", "flows", "tasks", "cli"},
    "tasks": {"flows", "cli"},
    "flows": {"cli"},
}
#: The modules that run inside the sandbox as scripts beside each other (the contract is also the host's).
SANDBOX_SCRIPTS = set(HARNESS_FILES) - {"contract.py"}


def test_no_library_module_imports_prefect():
    modules = sorted(
        "sharpe_rl." + ".".join(path.relative_to(LIBRARY).with_suffix("").parts)
        for path in LIBRARY.rglob("*.py")
        if path.name != "__init__.py" and path.name not in SANDBOX_SCRIPTS
    )
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += "print('prefect' in sys.modules or any(name.startswith('prefect.') for name in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def imported_packages(source: str) -> Iterator[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `source`, at any depth: module level, functions,
    classes, `if TYPE_CHECKING:` blocks."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name.partition(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.partition(".")[0]


def test_an_import_inside_a_function_is_seen():
    source = "import os\n\ndef run():\n    if True:\n        from flows.rl_run import run\n"
    assert list(imported_packages(source)) == [(1, "os"), (5, "flows")]


@pytest.mark.parametrize("package", FORBIDDEN)
def test_no_module_imports_against_the_flow_of_dependencies(package: str):
    found = [
        f"{path.relative_to(PROJECT)}:{line} imports {imported}"
        for path in sorted((PROJECT / package).rglob("*.py"))
        for line, imported in imported_packages(path.read_text())
        if imported in FORBIDDEN[package]
    ]
    assert not found, f"{package} must not import {sorted(FORBIDDEN[package])}: " + "; ".join(found)


def openmp_wait_policy_at_torch_load(entry: str, given: str | None) -> list[str]:
    """In a fresh interpreter with OMP_WAIT_POLICY `given` (or unset): import `entry`, then torch; the setting then,
    and whether sharpe_rl began to load before torch (sys.modules keeps the order in which imports began)."""
    code = f"import os, sys, {entry}, torch\nloaded = list(sys.modules)\n"
    code += "print(os.environ.get('OMP_WAIT_POLICY'), loaded.index('sharpe_rl') < loaded.index('torch'))"
    env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    env |= {"OMP_WAIT_POLICY": given} if given else {}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


@pytest.mark.parametrize("entry", ["cli.app", "flows.rl_run", "flows.evaluate_policy", "tasks.cycle"])
def test_torch_loads_with_openmp_threads_that_sleep_from_every_entry_point(entry: str):
    """The command line, the deployments' flows and a Dask worker's first task module: torch's OpenMP threads must
    not spin beside the experiments' containers (a step of the policy 2-3 times slower on a busy machine). OpenMP
    reads the setting when torch loads."""
    assert openmp_wait_policy_at_torch_load(entry, None) == ["PASSIVE", "True"]


def test_a_users_own_openmp_wait_policy_wins():
    assert openmp_wait_policy_at_torch_load("sharpe_rl", "ACTIVE") == ["ACTIVE", "True"]
