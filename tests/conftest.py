"""Fixtures shared across test modules, grouped by area. Add yours in a section of its own."""

from __future__ import annotations

import os
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
    from sharpe_rl.sandbox import InfrastructureError
    from sharpe_rl.sandbox.image import docker_client, ensure_image

    try:
        return ensure_image(docker_client())
    except InfrastructureError as exc:
        if os.environ.get("SHARPE_RL_REQUIRE_DOCKER") == "1":
            pytest.fail(f"SHARPE_RL_REQUIRE_DOCKER=1, but the sandbox cannot run: {exc}")
        pytest.skip(f"no sandbox: {exc}")


@pytest.fixture(scope="session")
def sandbox_panel() -> pl.DataFrame:
    """3 symbols x 400 daily bars of real Binance data: small enough for many sandbox runs."""
    source = SHARED_DATA / "binance_spot_1d.parquet"
    if not source.is_file():
        pytest.skip(f"{source} is not there (the shared data folder sits beside the checkout)")
    panel = pl.read_parquet(source).filter(pl.col("symbol").is_in(["BTCUSDT", "ETHUSDT", "SOLUSDT"]))
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
