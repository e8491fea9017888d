"""The library never imports Prefect: every piece can be used and tested without an orchestrator."""

import subprocess
import sys
from pathlib import Path

import sharpe_rl
from sharpe_rl.sandbox.image import HARNESS_FILES

LIBRARY = Path(sharpe_rl.__file__).parent
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
