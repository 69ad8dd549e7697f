"""A real headless Chromium (Debian's package) on the MLflow UI of a real sweep and on its report.

The study is the small real sweep of `test_report.real_study_once` (run once per session). The
MLflow UI is `itstudy.ui.start_server`, exactly what `itstudy ui` runs. Screenshots go to the
MLflow test's tmp folder and, for the report, to `test-output/browser/` in the repository
(gitignored), printed at the end of each test.

Skips, with the reason, when /usr/bin/chromium is missing: `.ci/install-browser` installs it.
Playwright drives it through `executable_path`; `playwright install` (a download) is never used.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboards.report import build_report
from itstudy.tracking import comparison_view_link, experiment_id_of, load_runs
from itstudy.ui import start_server, stop_server
from test_report import real_study_once

pytestmark = [pytest.mark.browser, pytest.mark.ray]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
OUTPUT = Path(__file__).resolve().parents[1] / "test-output" / "browser"
UI_TIMEOUT_MS = 60_000  # the first load compiles nothing but fetches a large SPA bundle on a busy 2-core machine


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed: run .ci/install-browser (Debian's chromium and chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    return real_study_once(tmp_path_factory.getbasetemp())


def screenshot_mlflow_ui(browser, tracking_uri: str, experiment: str, folder: Path, port: int) -> dict[str, Path]:
    """Open the study in the MLflow UI as a researcher would; assert what each view shows; one screenshot each.

    The link the sweep prints opens the experiment on its training runs (not GenAI traces) in the
    saved comparison view: every trial and baseline with its whole name and the comparison columns,
    without a click; the sweep run shows the summary metrics; a trial shows its headline metrics,
    its per-task figures under one prefix, and its tags.
    """
    folder.mkdir(parents=True, exist_ok=True)
    runs = load_runs(tracking_uri, experiment)
    sweep = runs[runs["tags.itstudy.kind"] == "sweep"].iloc[0]
    children = runs[runs["parent_run_id"] == sweep["run_id"]]
    trial = children[children["tags.itstudy.kind"] == "trial"].sort_values("name").iloc[0]
    experiment_id = experiment_id_of(tracking_uri, experiment)
    process = start_server(tracking_uri, port=port, log_file=folder / "mlflow-server.log")
    server = f"http://127.0.0.1:{port}/"
    base = f"{server}#/experiments/{experiment_id}"
    page = browser.new_page(viewport={"width": 1800, "height": 1100})
    shots = {}
    try:
        page.goto(server + comparison_view_link(experiment_id))  # the link the sweep prints
        page.get_by_text(trial["name"], exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
        _close_assistant(page)
        # The training view (Runs, Models), not GenAI's "Traces" / "No data available".
        page.get_by_text("Model registry").first.wait_for(timeout=UI_TIMEOUT_MS)
        assert page.get_by_text("No data available").count() == 0
        for column in ("itstudy.variant", "itstudy.instances_per_task", "itstudy.seed", "exact_match"):
            page.get_by_role("columnheader").filter(has_text=column).first.wait_for(timeout=UI_TIMEOUT_MS)
        for name in children["name"]:  # every child, its name whole (not cut by an ellipsis)
            cell = page.get_by_text(name, exact=True).first
            cell.wait_for(timeout=UI_TIMEOUT_MS)
            assert cell.evaluate("e => e.scrollWidth <= e.clientWidth"), f"run name cut off: {name}"
        shots["comparison"] = _shot(page, folder / "mlflow-comparison.png")

        page.goto(f"{base}/runs/{sweep['run_id']}?workflowType=machine_learning")
        for text in ("mean_exact_match/random", "mean_exact_match/majority", "mean_exact_match/def-original ex-original n5"):
            page.get_by_text(text).first.wait_for(timeout=UI_TIMEOUT_MS)
        shots["sweep"] = _shot(page, folder / "mlflow-sweep.png")

        page.goto(f"{base}/runs/{trial['run_id']}?workflowType=machine_learning")
        page.get_by_text(trial["name"]).first.wait_for(timeout=UI_TIMEOUT_MS)
        # Headline metrics first; per-task figures under one prefix; the tags that place the run; its parent.
        for text in ("exact_match", "per_task/exact_match_for_", "itstudy.variant", sweep["name"]):
            page.get_by_text(text, exact=text == "exact_match").first.wait_for(timeout=UI_TIMEOUT_MS)
        shots["trial"] = _shot(page, folder / "mlflow-trial.png")
        return shots
    finally:
        page.close()
        stop_server(process)


def _close_assistant(page) -> None:
    assistant = page.get_by_role("button", name="Close")
    if assistant.count():  # MLflow 3 opens an assistant side panel that hides the run columns
        assistant.first.click()


def _shot(page, path: Path) -> Path:
    page.screenshot(path=path, full_page=True)
    return path


def screenshot_report(browser, report: Path, folder: Path) -> tuple[Path, list[int]]:
    """Open report.html from disk; returns the screenshot and each figure's rendered width in pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        widths = page.eval_on_selector_all("img.figure", "images => images.map(image => image.complete ? image.naturalWidth : 0)")
        shot = folder / "report.png"
        page.screenshot(path=shot, full_page=True)
        return shot, widths
    finally:
        page.close()


def test_mlflow_ui_opens_on_the_comparison_with_whole_names_and_the_sweep_summary(browser, real_study, free_ports, tmp_path):
    shots = screenshot_mlflow_ui(browser, real_study.tracking_uri, real_study.experiment, tmp_path, free_ports(1)[0])
    for shot in shots.values():
        assert shot.stat().st_size > 10_000, shot
    print(f"\nMLflow UI screenshots: {', '.join(map(str, shots.values()))}")


def test_report_figures_render_in_chromium(browser, real_study):
    report = build_report(str(real_study.experiment_file), out_dir=OUTPUT / "report")
    shot, widths = screenshot_report(browser, report, OUTPUT)
    assert len(widths) == 4 and all(width > 0 for width in widths), widths
    assert shot.stat().st_size > 10_000
    print(f"\nreport: {report}\nreport screenshot: {shot}")
