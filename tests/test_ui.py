"""The UIs of `sharpe-rl serve`, checked in a real browser as a person would use them.

A small RL run (one cycle of 6 experiments of the test policy, in the Docker sandbox) is started
from the `rl_run/nightly` deployment's form in the Prefect UI (its advanced settings set on the
deployment, as prefect.yaml would), and the served worker runs it as it runs the nightly one.
Then headless Chromium (Debian's `chromium`, driven by Playwright; no browser download) looks at:
- the Prefect UI: the form (the night's settings at the top, the rest grouped below, one name
  field); Deployments lists `nightly` (flow rl_run) with its schedule; the run's Logs say its start,
  each cycle and its end; its Artifacts tab holds one post-mortem (with its tables, its plots and a
  link to the MLflow run) and the cycles done; a reset does not start without a confirmation;
- the MLflow UI: the sharpe-rl experiment opens on its runs (model training, not GenAI), holds one
  parent run whose experiments are its child runs, named after it, sortable by sharpe_net; the
  run's post-mortem shows in MLflow's artifact view with its images loaded.

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

from sharpe_rl.config import AdvancedSettings, EvalConfig, PolicyConfig, SandboxConfig
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.services import MLFLOW_PORT, PREFECT_PORT, prefect_api_url
from sharpe_rl.tracking import EXPERIMENT_NAME

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PREFECT_UI = f"http://127.0.0.1:{PREFECT_PORT}"
MLFLOW_UI = f"http://127.0.0.1:{MLFLOW_PORT}"
RUN = "ui-check"
CYCLES, BATCH_SIZE = 1, 6
EXPERIMENT_RUN_NAME = re.compile(rf"^{RUN} c\d{{3}}-\d{{2}} ")  # a child run: <run> c<cycle>-<index> <name>
TIMEOUT_MS = 30_000  # a busy 2-core machine renders these pages in seconds, not milliseconds


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


def new_page(browser):
    """A page in a new browser context: nothing remembered from another page, like a first visit."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


@pytest.fixture
def page(browser):
    page = new_page(browser)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = Path(os.environ.get("SHARPE_RL_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def prefect_client():
    """Prefect's sync client on the served API (its dual sync/async functions return coroutines beside Playwright)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api_url()}):
        return get_client(sync_client=True)


@pytest.fixture(scope="module")
def nightly(served, pipeline_policy: Path, sandbox_image: str) -> AdvancedSettings:
    """The nightly deployment with the test's advanced settings as its defaults (what prefect.yaml would hold):
    state in the served runs folder, two folds, a small sandbox, the test policy."""
    from prefect.client.schemas.actions import DeploymentUpdate

    _, _, runs = served
    advanced = AdvancedSettings(
        runs_dir=runs,
        eval=EvalConfig(n_folds=2),
        sandbox=SandboxConfig(executor="docker", image=sandbox_image, workers=2, timeout_seconds=90, memory_mb=1024),
        policy=PolicyConfig(model=str(pipeline_policy), max_new_tokens=700),
    )
    with prefect_client() as client:
        deployment = client.read_deployment_by_name("rl_run/nightly")
        parameters = {"advanced": advanced.model_dump(mode="json")}
        client.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))
    return advanced


def field_label(page, name: str):
    """The label of the form's field `name` (Prefect's form labels a field with a default "name (Optional)"). The
    label, not the control: a drop-down is a button "Select name", an optional int a pair of tabs."""
    return page.get_by_text(re.compile(rf"^{re.escape(name)}( \(Optional\))?$"), exact=True)


def open_custom_run_form(page, deployment: str) -> None:
    page.goto(PREFECT_UI)
    page.get_by_role("link", name="Deployments", exact=True).click()
    page.get_by_role("link", name=deployment, exact=True).click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()


@pytest.fixture(scope="module")
def finished_run(browser, nightly: AdvancedSettings, pipeline_dataset: Path, screenshots: Path) -> AdvancedSettings:
    """A run started from the nightly deployment's form in the browser and executed by the served worker."""
    from playwright.sync_api import expect

    page = new_page(browser)
    open_custom_run_form(page, "nightly")
    form = page.get_by_role("main")
    page.get_by_label("Run Name").fill(RUN)
    page.get_by_label("cycles").fill(str(CYCLES))
    page.get_by_label("batch_size").fill(str(BATCH_SIZE))
    page.get_by_label("dataset").fill(str(pipeline_dataset))
    expect(form.get_by_label("prompt_version")).to_be_visible()
    page.screenshot(path=screenshots / "prefect-run-form.png")
    page.get_by_role("button", name="Submit").click()
    with prefect_client() as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId

        by_name = FlowRunFilter(name=FlowRunFilterName(any_=[RUN]))
        # the page is kept open until the server has the run: beside a busy machine the form's request and the
        # page's own refresh can take longer than an expectation's 30 s (the deployments page test checks the list)
        deadline = time.monotonic() + 180
        while not client.read_flow_runs(flow_run_filter=by_name):
            assert time.monotonic() < deadline, "Submit on the run form created no flow run in 3 minutes"
            time.sleep(2)
        page.context.close()

        deadline = time.monotonic() + 900
        while True:
            found = client.read_flow_runs(flow_run_filter=by_name)
            if found and found[0].state.is_final():
                break
            assert time.monotonic() < deadline, f"the run did not finish in 15 minutes: {found}"
            time.sleep(3)
        worker_log = (nightly.runs_dir / "logs" / "prefect-worker.log").read_text(errors="replace")[-3000:]
        assert found[0].state.is_completed(), f"{found[0].state}\n{worker_log}"
        # the flow's process sends its log lines to the API in batches, every 2 s: its end line can reach the
        # server after its Completed state (a person who opened the Logs tab at once would refresh)
        of_the_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[found[0].id]))
        deadline = time.monotonic() + 60
        while not any(f"run {RUN} finished" in log.message for log in client.read_logs(log_filter=of_the_run)):
            assert time.monotonic() < deadline, "the run's end line did not reach the server in a minute"
            time.sleep(2)
    return nightly


def test_the_run_form_puts_the_nights_settings_at_the_top_with_one_name_field(page, nightly, screenshots):
    from playwright.sync_api import expect

    open_custom_run_form(page, "nightly")
    fields = ["Run Name", "cycles", "batch_size", "dataset", "prompt_version", "seed"]
    tops = []
    for name in fields:
        label = field_label(page, name)
        expect(label).to_have_count(1)
        expect(label).to_be_visible()  # on the first screen, without scrolling
        tops.append(label.bounding_box()["y"])
    assert tops == sorted(tops)  # in this order, from the top
    advanced = field_label(page, "advanced")
    advanced.scroll_into_view_if_needed()
    assert advanced.bounding_box()["y"] > tops[-1]  # everything else grouped below them
    expect(field_label(page, "name")).to_have_count(0)  # one name field: Run Name
    page.get_by_role("button", name="Select prompt_version").click()
    versions = page.get_by_role("listbox").get_by_role("option")
    expect(versions).to_contain_text(["v4_example", "v5_rules", "v6_inspiration"])  # a drop-down of the versions
    page.keyboard.press("Escape")


def test_the_deployments_page_lists_the_nightly_run_with_its_schedule(page, finished_run, screenshots):
    from playwright.sync_api import expect

    page.goto(PREFECT_UI)
    page.get_by_role("link", name="Deployments", exact=True).click()  # the sidebar
    nightly = page.get_by_role("row").filter(has=page.get_by_role("link", name="nightly", exact=True))
    expect(nightly).to_contain_text("rl_run")  # the flow it runs
    expect(nightly).to_contain_text("At 10:00 PM")  # deployments/prefect.yaml: cron 0 22 * * *, local time
    page.screenshot(path=screenshots / "prefect-deployments.png")


def open_flow_run(page, name: str) -> None:
    page.goto(PREFECT_UI)
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_role("link", name=name, exact=True).first.click()


def test_the_flow_runs_logs_say_its_start_each_cycle_and_its_end(page, finished_run, screenshots):
    from playwright.sync_api import expect

    open_flow_run(page, RUN)
    page.get_by_role("tab", name="Logs").click()
    expect(
        page.get_by_text(re.compile(rf"^run {RUN}: starting, {CYCLES} cycles × {BATCH_SIZE} experiments"))
    ).to_be_visible()
    expect(page.get_by_text(re.compile(r"^MLflow: http://127\.0\.0\.1:5000/#/experiments/"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"^seed \d+ is fresh"))).to_be_visible()  # no seed in the form: a fresh one
    cycle = page.get_by_text(re.compile(rf"^cycle 0: reward mean [+-]\d\.\d{{3}}.*; ran \d of {BATCH_SIZE}, failed \d"))
    expect(cycle).to_be_visible()
    # the Logs tab renders the lines it shows: a person scrolls to the end of the run's log to read its last line
    page.get_by_role("log").get_by_role("listitem").last.scroll_into_view_if_needed()
    expect(
        page.get_by_text(re.compile(rf"^run {RUN} finished: post-mortem /.*/reports/{RUN}/report\.html"))
    ).to_be_visible()
    page.screenshot(path=screenshots / "prefect-run-logs.png", full_page=True)


def test_a_finished_runs_artifacts_show_the_post_mortem_and_the_cycles_done(page, finished_run, screenshots):
    from playwright.sync_api import expect

    open_flow_run(page, RUN)
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    page.get_by_role("tab", name="Artifacts").click()
    post_mortem = page.get_by_role("link").filter(has=page.get_by_role("heading", name=f"{RUN}-post-mortem"))
    expect(post_mortem).to_have_count(1)  # one, kept current, not one per cycle
    expect(post_mortem).to_contain_text(f"Post-mortem of {RUN}")
    progress = page.get_by_role("link").filter(has=page.get_by_role("heading", name=f"{RUN}-progress"))
    expect(progress).to_contain_text(f"{CYCLES} of {CYCLES} cycles done")
    page.screenshot(path=screenshots / "prefect-run-artifacts.png", full_page=True)

    post_mortem.click()  # the artifact's versions: one per flow run
    page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).click()
    expect(page.get_by_role("heading", name=f"sharpe-rl post-mortem: {RUN}")).to_be_visible()
    expect(page.get_by_role("link", name=f"the run {RUN}, its experiments and this report")).to_have_attribute(
        "href",
        re.compile(r"^http://127\.0\.0\.1:5000/#/experiments/\d+/runs/[0-9a-f]{32}\?workflowType=machine_learning$"),
    )
    expect(page.get_by_role("row", name=f"cycles {CYCLES}", exact=True)).to_be_visible()  # the last version
    expect(page.get_by_role("row", name=f"experiments {CYCLES * BATCH_SIZE}", exact=True)).to_be_visible()
    plots = page.get_by_role("img", name=re.compile(r"\?$"))  # each plot is titled by its section's question
    expect(plots).to_have_count(6)
    for plot in plots.all():
        plot.scroll_into_view_if_needed()
        assert plot.evaluate("img => img.complete && img.naturalWidth > 0"), "a plot shows as a broken image"
    top = {"x": 0, "y": 0, "width": 1440, "height": 2000}  # the headline and the first plot
    page.screenshot(path=screenshots / "prefect-post-mortem.png", full_page=True, clip=top)


def experiments_of_the_run() -> tuple[str, dict[str, float | None], str]:
    """The experiment's id, the child runs' net Sharpe by run name, and the parent run's id (from MLflow's API)."""
    client = MlflowClient(MLFLOW_UI)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    of_the_run = f"tags.`sharpe_rl.run` = '{RUN}' and tags.`sharpe_rl.kind` = 'experiment'"
    children = client.search_runs([experiment.experiment_id], filter_string=of_the_run)
    parent = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`sharpe_rl.run` = '{RUN}' and tags.`sharpe_rl.kind` = 'parent'"
    )[0]
    return (
        experiment.experiment_id,
        {r.info.run_name: r.data.metrics.get("sharpe_net") for r in children},
        parent.info.run_id,
    )


def test_the_mlflow_experiment_shows_the_run_and_its_experiments_sortable_by_sharpe(page, finished_run, screenshots):
    from playwright.sync_api import expect

    experiment_id, sharpe, parent_id = experiments_of_the_run()
    scored = [name for name, value in sharpe.items() if value is not None]
    assert len(sharpe) == CYCLES * BATCH_SIZE and len(scored) >= 2, f"too few experiments ran to sort: {sharpe}"

    # the address the run's logs and post-mortem give opens its parent run in the model-training view, and the
    # sidebar's Runs goes on to the experiment's runs in that view (a bare experiment address opens GenAI's)
    page.goto(f"{MLFLOW_UI}/#/experiments/{experiment_id}/runs/{parent_id}?workflowType=machine_learning")
    expect(page.get_by_role("heading", name=RUN, exact=True)).to_be_visible()
    expect(page.get_by_role("tab", name="Model metrics")).to_be_visible()
    page.get_by_role("navigation").get_by_role("link", name="Runs", exact=True).click()
    experiments = page.get_by_role("link", name=EXPERIMENT_RUN_NAME)
    parent = page.get_by_role("link", name=RUN, exact=True)
    expect(parent).to_have_count(1)  # its runs, not the GenAI views: one parent run for the RL run
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


def test_the_post_mortem_shows_in_mlflows_artifact_view_with_its_images(page, finished_run, screenshots):
    from playwright.sync_api import expect

    experiment_id, _, parent_id = experiments_of_the_run()
    page.goto(f"{MLFLOW_UI}/#/experiments/{experiment_id}/runs/{parent_id}/artifacts")
    close_assistant(page)
    page.get_by_text("report", exact=True).click()
    page.get_by_text("report.html", exact=True).click()
    report = page.frame_locator("iframe").first
    expect(report.get_by_role("heading", name=f"sharpe-rl post-mortem: {RUN}")).to_be_visible()
    images = report.get_by_role("img")
    expect(images).to_have_count(6)
    for image in images.all():
        image.scroll_into_view_if_needed()
        assert image.evaluate("img => img.complete && img.naturalWidth > 0"), "a plot shows as a broken image"
    expect(report.locator("code", has_text=RUN).first).to_be_visible()  # Markdown rendered, not raw backticks
    page.screenshot(path=screenshots / "mlflow-post-mortem.png")


def test_a_reset_does_not_start_without_a_confirmation(page, finished_run, screenshots):
    from playwright.sync_api import expect

    runs = finished_run.runs_dir
    assert Checkpoints(runs, RUN).latest_cycle() == CYCLES - 1
    page.goto(PREFECT_UI)
    page.get_by_role("link", name="Deployments", exact=True).click()
    page.get_by_role("link", name="reset", exact=True).first.click()  # the deployment; its row also links its flow
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Quick run").click()  # one click: the flow run pauses and asks
    page.get_by_role("link", name="View run").click()
    expect(page.get_by_text("Paused", exact=True).first).to_be_visible(timeout=120_000)
    assert Checkpoints(runs, RUN).latest_cycle() == CYCLES - 1  # nothing archived while it waits

    page.get_by_role("main").get_by_role("button", name="Open menu").first.click()  # the run's menu, top right
    page.get_by_role("menuitem", name="Resume").click()
    dialog = page.get_by_role("dialog", name="Resume Flow Run")
    expect(dialog).to_contain_text(f"the checkpoints of run {RUN} ({CYCLES} cycle done)")
    archive = dialog.get_by_role("switch", name=re.compile(r"^Archive"))
    expect(archive).not_to_be_checked()  # archiving is a choice, not the default
    archive.click()
    expect(archive).to_be_checked()
    page.screenshot(path=screenshots / "prefect-reset-confirmation.png")
    dialog.get_by_role("button", name="Resume").click()
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=120_000)
    assert Checkpoints(runs, RUN).latest_cycle() is None  # archived once confirmed


def close_assistant(page) -> None:
    """Close MLflow's assistant panel, which opens beside every page and hides the table's right half."""
    panel_close = page.get_by_role("button", name="Close", exact=True)
    if panel_close.count():
        panel_close.first.click()
