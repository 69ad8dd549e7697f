"""A real headless Chromium (Debian's package) on the MLflow UI of a real sweep and on its report.

The study is the small real sweep of `test_report.real_study_once` (run once per session). The
MLflow UI is `itstudy.ui.start_server`, exactly what `itstudy ui` runs. Screenshots go to
`test-output/browser/` in the repository (gitignored), printed at the end of each test.

Skips, with the reason, when /usr/bin/chromium is missing: `.ci/install-browser` installs it.
Playwright drives it through `executable_path`; `playwright install` (a download) is never used.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboards.report import build_report
from itstudy.tracking import experiment_id_of, load_runs
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


def screenshot_mlflow_ui(browser, tracking_uri: str, experiment: str, folder: Path, port: int) -> list[Path]:
    """Open the study in the MLflow UI: the sweep run, its nested runs, a trial's metrics; one screenshot each."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = load_runs(tracking_uri, experiment)
    sweep = runs[runs["tags.itstudy.kind"] == "sweep"].iloc[0]
    trial = runs[runs["tags.itstudy.kind"] == "trial"].sort_values("name").iloc[0]
    experiment_id = experiment_id_of(tracking_uri, experiment)
    server = start_server(tracking_uri, port=port, log_file=folder / "mlflow-server.log")
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    try:
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs")
        page.get_by_text(sweep["name"]).first.wait_for(timeout=UI_TIMEOUT_MS)
        assistant = page.get_by_role("button", name="Close")
        if assistant.count():  # MLflow 3 opens an assistant side panel that hides the run columns
            assistant.first.click()
        # The sweep's children are nested under it: expand the parent row and wait for a trial.
        page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
        page.get_by_text(trial["name"][:20]).first.wait_for(timeout=UI_TIMEOUT_MS)
        shots = [folder / "mlflow-runs.png"]
        page.screenshot(path=shots[0])
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs/{trial['run_id']}")
        page.get_by_text(trial["name"]).first.wait_for(timeout=UI_TIMEOUT_MS)
        # The overall metric, per-task metrics, the tags that place the run, the link to its parent.
        for text in ("exact_match", "exact_match_for_", "itstudy.variant", sweep["name"]):
            page.get_by_text(text, exact=text == "exact_match").first.wait_for(timeout=UI_TIMEOUT_MS)
        shots.append(folder / "mlflow-trial.png")
        page.screenshot(path=shots[1], full_page=True)
        return shots
    finally:
        page.close()
        stop_server(server)


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


def test_mlflow_ui_shows_the_experiment_nested_runs_and_metrics(browser, real_study, free_ports):
    shots = screenshot_mlflow_ui(browser, real_study.tracking_uri, real_study.experiment, OUTPUT, free_ports(1)[0])
    for shot in shots:
        assert shot.stat().st_size > 10_000, shot
    print(f"\nMLflow UI screenshots: {', '.join(map(str, shots))}")


def test_report_figures_render_in_chromium(browser, real_study):
    report = build_report(str(real_study.experiment_file), out_dir=OUTPUT / "report")
    shot, widths = screenshot_report(browser, report, OUTPUT)
    assert len(widths) == 4 and all(width > 0 for width in widths), widths
    assert shot.stat().st_size > 10_000
    print(f"\nreport: {report}\nreport screenshot: {shot}")
