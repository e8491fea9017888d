"""Fixtures shared across test modules, grouped by area. Add yours in a section of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from sharpe_rl.config import TinyPolicyConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network for telemetry


# ---- sandbox: the Docker engine, the sandbox image, a small real panel ----


@pytest.fixture(scope="session")
def sandbox_image() -> str:
    """The sandbox image tag, built when missing (the first build takes a few minutes).

    Without a Docker engine the test is skipped, unless SHARPE_RL_REQUIRE_DOCKER=1 (CI), where
    a missing engine is a failure: the tests that claim isolation must never be skipped there.
    """
    from service_fixtures import require

    from sharpe_rl.sandbox import InfrastructureError
    from sharpe_rl.sandbox.image import docker_client, ensure_image

    try:
        return ensure_image(docker_client())
    except InfrastructureError as exc:
        require(False, f"the sandbox cannot run: {exc}")


def shared_panel(name: str) -> pl.DataFrame:
    """A real panel from the shared data folder; every sandbox test reads one, so CI fails without it."""
    from service_fixtures import require

    source = SHARED_DATA / name
    require(source.is_file(), f"{source} is not there (the shared data folder sits beside the checkout)")
    return pl.read_parquet(source)


@pytest.fixture(scope="session")
def shared_daily_panel() -> pl.DataFrame:
    """Real Binance daily bars: 21 USDT pairs, 2017-2026."""
    return shared_panel("binance_spot_1d.parquet")


@pytest.fixture(scope="session")
def shared_4h_panel() -> pl.DataFrame:
    """Real Binance 4-hour bars: 20 USDT pairs, 2017-2026."""
    return shared_panel("binance_spot_4h.parquet")


@pytest.fixture(scope="session")
def sandbox_panel(shared_daily_panel: pl.DataFrame) -> pl.DataFrame:
    """3 symbols x 400 daily bars of real Binance data: small enough for many sandbox runs."""
    panel = shared_daily_panel.filter(pl.col("symbol").is_in(["BTCUSDT", "ETHUSDT", "SOLUSDT"]))
    last = panel.get_column("timestamp").max()
    return panel.filter(pl.col("timestamp") > last - pl.duration(days=400)).sort("timestamp", "symbol")


# ---- policy: a micro tiny policy (same builder as `sharpe-rl build-policy`, seconds to build) ----

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test ever downloads a model


@pytest.fixture(scope="session")
def micro_policy_config() -> TinyPolicyConfig:
    """Tiny dims and a few dozen steps: enough to exercise every code path, not to write good code."""
    return TinyPolicyConfig(
        steps=30,
        batch_size=8,
        warmup_steps=5,
        corpus_size=160,
        vocab_size=800,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        context_length=1024,
    )


@pytest.fixture(scope="session")
def micro_policy(tmp_path_factory: pytest.TempPathFactory, micro_policy_config: TinyPolicyConfig) -> Path:
    """A micro policy built with `build_tiny_policy` (as `sharpe-rl build-policy` does) in a temp dir."""
    from sharpe_rl.policy.tiny import build_tiny_policy

    out = tmp_path_factory.mktemp("policy") / "micro"
    build_tiny_policy(out, micro_policy_config)
    return out


# ---- pipeline: a dataset and a policy good enough to write runnable experiments ----


@pytest.fixture(scope="session")
def pipeline_dataset(tmp_path_factory: pytest.TempPathFactory, sandbox_panel: pl.DataFrame) -> Path:
    """The sandbox panel as a Parquet file, the form a run reads."""
    path = tmp_path_factory.mktemp("data") / "panel.parquet"
    sandbox_panel.write_parquet(path)
    return path


@pytest.fixture(scope="session")
def pipeline_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy at its real size and corpus, trained for 40% of its steps (about a minute on 2
    cores): 9 completions in 10 parse and run."""
    from sharpe_rl.policy.tiny import build_tiny_policy

    out = tmp_path_factory.mktemp("policy") / "tiny"
    build_tiny_policy(out, TinyPolicyConfig(steps=PIPELINE_POLICY_STEPS))
    return out


PIPELINE_POLICY_STEPS = 1000


# ---- serve: `sharpe-rl serve` (Prefect server, deployments, worker, MLflow UI) on its fixed ports ----


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """`sharpe-rl serve` on a fresh runs folder, yielding (process, what it printed, runs folder).

    Once per module: the ports are fixed (4200, 5000), so two can never run at once. Afterwards it
    is stopped as Ctrl-C stops it, so its server, worker and MLflow UI stop with it.
    """
    from service_fixtures import REQUIRE_BROWSER, REQUIRE_DOCKER, require

    from sharpe_rl.services import MLFLOW_PORT, is_up, prefect_api_url

    busy = is_up(f"{prefect_api_url()}/health") or is_up(f"http://127.0.0.1:{MLFLOW_PORT}/health")
    require(
        not busy,
        "a Prefect server or MLflow UI already runs on this machine's default ports (stop it to run these tests)",
        (REQUIRE_DOCKER, REQUIRE_BROWSER),
    )
    runs = tmp_path_factory.mktemp("serve") / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--runs-dir", str(runs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    deadline = time.monotonic() + 240
    while not any("Ctrl-C" in line for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
        lines.append(process.stdout.readline())
    yield process, "".join(lines), runs
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


# ---- the pipeline under Prefect: one temporary Prefect server, and a reference run on threads ----


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server for every test that runs flows (started once: it takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, prefect_server, sandbox_image, pipeline_dataset: Path, pipeline_policy: Path):
    """Four cycles of the tiny policy through the rl_run flow, executions on local threads in Docker.

    The end-to-end checks read it, and the Dask run must reproduce its rewards exactly.
    """
    from pipeline_fixtures import make_config

    from flows.rl_run import run
    from sharpe_rl.policy import learner

    config = make_config(tmp_path_factory.mktemp("e2e") / "runs", pipeline_dataset, pipeline_policy, "e2e", cycles=4)
    assert run(config) == "e2e"
    learner.release()
    return config


# ---- faults and scale-out: a second Docker engine (ours to restart) ----


@pytest.fixture(scope="session")
def second_engine(sandbox_image: str):
    """A dockerd of the tests' own, with the sandbox image loaded; stopped and removed at the end."""
    from service_fixtures import second_docker_engine

    with second_docker_engine(sandbox_image) as engine:
        yield engine
