"""The orchestration environment a command sets up before Prefect starts."""

from __future__ import annotations

import os

from sharpe_rl.services import use_orchestration_environment


def test_a_runs_directory_that_does_not_exist_yet_gets_its_prefect_home(tmp_path, monkeypatch):
    # Prefect creates only the last level of its home: `sharpe-rl run --runs-dir new/runs` once failed
    # with "Failed to create the Prefect home directory" and then a database error.
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    runs = tmp_path / "new" / "runs"
    use_orchestration_environment(runs)
    assert os.environ["PREFECT_HOME"] == str((runs / "prefect").resolve())
    assert (runs / "prefect").is_dir()
