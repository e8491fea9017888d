"""The UIs of `sharpe-rl serve`, checked in a real browser as a person would check them.

A small RL run (one cycle of 6 experiments of the test policy, in the Docker sandbox) is started
through the `rl_run/nightly` deployment, so the served worker runs it as it runs the nightly one.
Then headless Chromium (Debian's `chromium`, driven by Playwright; no browser download) looks at:
- the Prefect UI: Deployments lists `nightly` (flow rl_run) with its schedule; the run's Artifacts
  tab holds one post-mortem, which opens with its tables and its plots;
- the MLflow UI (its "Model training" view): the sharpe-rl experiment holds one parent run, the
  experiments are its child runs, and sorting by sharpe_net puts the best experiment first.

Selectors are the texts and roles a person reads on the page: a new UI version moves CSS classes
and markup far more often than labels. Screenshots go to the test's temporary folder, or to
SHARPE_RL_SCREENSHOTS: `SHARPE_RL_SCREENSHOTS=docs/screenshots pytest tests/test_ui.py` refreshes
the README's. Without Chromium or Playwright the tests are skipped, unless
SHARPE_RL_REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from service_fixtures import REQUIRE_BROWSER, require

from sharpe_rl.config import EvalConfig, PolicyConfig, RunConfig, SandboxConfig
from sharpe_rl.services import MLFLOW_PORT, PREFECT_PORT, prefect_api_url
from sharpe_rl.tracking import EXPERIMENT_NAME

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PREFECT_UI = f"http://127.0.0.1:{PREFECT_PORT}"
MLFLOW_UI = f"http://127.0.0.1:{MLFLOW_PORT}"
RUN = "ui-check"
CYCLES, BATCH_SIZE = 1, 6
EXPERIMENT_RUN_NAME = re.compile(r"^c\d{3}-\d{2} ")  # how the tracker names a child run: c<cycle>-<index> <name>
TIMEOUT_MS = 30_000  # a busy 2-core machine renders these pages in seconds, not milliseconds


@pytest.fixture(scope="module")
def finished_run(served, pipeline_dataset: Path, pipeline_policy: Path, sandbox_image: str) -> RunConfig:
    """A run started through the rl_run/nightly deployment and executed by the served worker."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _, _, runs = served
    config = RunConfig(
        name=RUN,
        cycles=CYCLES,
        batch_size=BATCH_SIZE,
        dataset=pipeline_dataset,
        runs_dir=runs,
        eval=EvalConfig(n_folds=2),
        sandbox=SandboxConfig(executor="docker", image=sandbox_image, workers=2, timeout_seconds=90, memory_mb=1024),
        policy=PolicyConfig(model=str(pipeline_policy), max_new_tokens=700),
    )
    # The sync client: Prefect's dual sync/async functions return coroutines beside Playwright's event loop.
    with temporary_settings({PREFECT_API_URL: prefect_api_url()}), get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("rl_run/nightly")
        parameters = {"config": config.model_dump(mode="json")}
        flow_run = client.create_flow_run_from_deployment(nightly.id, parameters=parameters)
        deadline = time.monotonic() + 900
        while not (flow_run := client.read_flow_run(flow_run.id)).state.is_final():
            assert time.monotonic() < deadline, f"the run did not finish in 15 minutes: {flow_run.state}"
            time.sleep(3)
    worker_log = (runs / "logs" / "prefect-worker.log").read_text(errors="replace")[-3000:]
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{worker_log}"
    return config


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system, with a fresh profile (Playwright makes one per launch) and no network."""
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing = "Playwright is not installed (pip install -e '.[dev]')"
    else:
        missing = None if chromium else "no `chromium` on the PATH (Debian: apt-get install chromium)"
    require(missing is None, f"the UIs cannot be checked: {missing}", (REQUIRE_BROWSER,))
    args = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
    args += ["--disable-component-update", "--disable-sync"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's own sandbox refuses to start as root
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=args)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A new browser context per test: nothing remembered from another page, like a first visit."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("SHARPE_RL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_the_deployments_page_lists_the_nightly_run_with_its_schedule(page, finished_run, screenshots):
    from playwright.sync_api import expect

    page.goto(PREFECT_UI)
    page.get_by_role("link", name="Deployments", exact=True).click()  # the sidebar
    nightly = page.get_by_role("row").filter(has=page.get_by_role("link", name="nightly", exact=True))
    expect(nightly).to_contain_text("rl_run")  # the flow it runs
    expect(nightly).to_contain_text("At 10:00 PM")  # deployments/prefect.yaml: cron 0 22 * * *, local time
    page.screenshot(path=screenshots / "prefect-deployments.png")


def test_a_finished_runs_artifacts_show_the_post_mortem(page, finished_run, screenshots):
    from playwright.sync_api import expect

    page.goto(PREFECT_UI)
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_role("link", name=RUN, exact=True).first.click()
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    page.get_by_role("tab", name="Artifacts").click()
    post_mortem = page.get_by_role("link").filter(has=page.get_by_role("heading", name=f"{RUN}-post-mortem"))
    expect(post_mortem).to_have_count(1)  # one, kept current, not one per cycle
    expect(post_mortem).to_contain_text(f"Post-mortem of {RUN}")
    page.screenshot(path=screenshots / "prefect-run-artifacts.png", full_page=True)

    post_mortem.click()  # the artifact's versions: one per flow run
    page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).click()
    expect(page.get_by_role("heading", name=f"sharpe-rl post-mortem: {RUN}")).to_be_visible()
    expect(page.get_by_role("row", name=f"cycles {CYCLES}", exact=True)).to_be_visible()  # the last version
    expect(page.get_by_role("row", name=f"experiments {CYCLES * BATCH_SIZE}", exact=True)).to_be_visible()
    plots = page.get_by_role("img", name=re.compile(r"\?$"))  # each plot is titled by its section's question
    expect(plots).to_have_count(6)
    for plot in plots.all():
        plot.scroll_into_view_if_needed()
        assert plot.evaluate("img => img.complete && img.naturalWidth > 0"), "a plot shows as a broken image"
    top = {"x": 0, "y": 0, "width": 1440, "height": 2000}  # the headline and the first plot
    page.screenshot(path=screenshots / "prefect-post-mortem.png", full_page=True, clip=top)


def test_the_mlflow_experiment_shows_the_run_and_its_experiments_sortable_by_sharpe(page, finished_run, screenshots):
    from playwright.sync_api import expect

    client = MlflowClient(MLFLOW_UI)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    of_the_run = f"tags.`sharpe_rl.run` = '{RUN}' and tags.`sharpe_rl.kind` = 'experiment'"
    children = client.search_runs([experiment.experiment_id], filter_string=of_the_run)
    sharpe = {run.info.run_name: run.data.metrics.get("sharpe_net") for run in children}
    scored = [name for name, value in sharpe.items() if value is not None]
    assert len(children) == CYCLES * BATCH_SIZE and len(scored) >= 2, f"too few experiments ran to sort: {sharpe}"

    page.goto(MLFLOW_UI)
    page.get_by_role("button", name="Model training").click()  # MLflow opens on its GenAI (traces) view
    page.get_by_role("link", name=EXPERIMENT_NAME, exact=True).click()
    experiments = page.get_by_role("link", name=EXPERIMENT_RUN_NAME)
    parent = page.get_by_role("link", name=RUN, exact=True)
    expect(parent).to_have_count(1)  # one parent run for the RL run
    close_assistant(page)
    expect(experiments).to_have_count(0)  # its experiments are folded under it
    page.get_by_role("row").filter(has=parent).get_by_role("button").first.click()  # the [+] that unfolds it
    expect(experiments).to_have_count(CYCLES * BATCH_SIZE)
    page.screenshot(path=screenshots / "mlflow-runs.png")

    page.get_by_role("button", name=re.compile(r"^Sort:")).click()
    page.get_by_role("menuitemcheckbox", name="sharpe_net", exact=True).click()
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="Sort: sharpe_net")).to_be_visible()
    expect(page.get_by_role("columnheader", name="sharpe_net").first).to_be_visible()
    expect(experiments).to_have_count(CYCLES * BATCH_SIZE)
    # the table reuses its row elements, so the order a person sees is the order on the screen
    shown = sorted(experiments.all(), key=lambda link: link.bounding_box()["y"])
    shown_sharpe = [sharpe[link.inner_text()] for link in shown if sharpe[link.inner_text()] is not None]
    assert shown_sharpe == sorted(shown_sharpe, reverse=True) and shown_sharpe[0] == max(sharpe[n] for n in scored)
    page.screenshot(path=screenshots / "mlflow-sorted-by-sharpe.png")


def close_assistant(page) -> None:
    """Close MLflow's assistant panel, which opens beside every page and hides the table's right half."""
    panel_close = page.get_by_role("button", name="Close", exact=True)
    if panel_close.count():
        panel_close.first.click()
