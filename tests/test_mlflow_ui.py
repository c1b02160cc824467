"""MLflow's UI used as a person browses herd's runs, in headless Chromium, after a tiny pipeline run.

A hand-run ``datamix`` and a ``scout.gate`` (on the gate tests' tiny model and stand-in
upstream outputs) share pipeline run ``browse-1``; the gate registers ``herd-scout`` and
moves ``candidate`` to it. ``mlflow server`` then serves the store, and the browser opens the
``herd`` experiment on its runs, unfolds the pipeline run into its stage runs, opens
``datamix`` (its dataset, its plot) and the registered model (its ``candidate`` alias).

    .venv/bin/python -m pytest -q -rP tests/test_mlflow_ui.py   # -rP prints the screenshots' folder

Skipped without Debian's ``chromium`` and ``chromium-driver``, as the Airflow UI test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import pytest
from conftest import herd, output_of
from live_airflow import free_port
from test_gate import GOOD, Gates, tiny_export

RUN = "browse-1"


def _start_server(store: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=os.environ.copy(),
                              start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def _wait_healthy(server: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urlopen(f"{url}/health", timeout=5) as response:  # noqa: S310 - the test's own server
                if response.read().strip() == b"OK":
                    return
        except (URLError, OSError):
            time.sleep(1)
    raise AssertionError(f"mlflow server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browsed_store(udhr_subset, tmp_path_factory):
    """A store holding pipeline run ``browse-1`` (datamix, scout.gate) and ``herd-scout`` v1, served by mlflow."""
    root = tmp_path_factory.mktemp("mlflow-ui")
    home = root / "herd-home"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HERD_HOME", str(home))
        for variable in ("MLFLOW_TRACKING_URI", "HERD_ARTIFACT_ROOT", "HERD_BACKEND"):
            env.delenv(variable, raising=False)
        from tasks.runtime import tracking

        client = tracking.client()
        experiment = tracking.experiment_id(client)  # the store exists before the server opens it
        # The server's start takes as long as the stages on a busy machine: both at once.
        server, url = _start_server(tracking.tracking_uri(), root / "server.log")
        try:
            mix = output_of(herd("stage", "datamix", "--run", RUN, "--in", f"corpus={udhr_subset}"))
            gates = Gates(home, tiny_export(root / "tiny-model"))
            gates.prefix, gates.name = "herd", "herd-scout"  # the default registered model name, herd-<variant>
            gate_step, _ = gates.run(GOOD, run_id=RUN)
            _wait_healthy(server, url, root / "server.log")
            yield {"url": url, "experiment": experiment, "mix": mix, "gate": gate_step, "client": client}
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_the_experiment_opens_on_runs_a_stage_shows_its_dataset_and_plot_the_model_its_alias(
        browser, browsed_store, tmp_path, record_property):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    url, experiment = browsed_store["url"], browsed_store["experiment"]
    wait = WebDriverWait(browser, 90)  # the React app renders slowly on two busy cores
    shots = tmp_path / "screenshots"
    shots.mkdir()
    record_property("screenshots", str(shots))
    print(f"screenshots: {shots}")

    def link(text: str):
        return wait.until(ready.element_to_be_clickable((By.XPATH, f"//a[normalize-space()='{text}']")))

    def shows(text: str) -> None:
        wait.until(ready.text_to_be_present_in_element((By.TAG_NAME, "body"), text))

    step = "runs"
    try:
        browser.get(f"{url}/#/experiments/{experiment}")
        # MLflow 3.17 shows every experiment as its sidebar switch says, GenAI until a person picks "Model
        # training" once (the browser keeps the choice): the herd experiment then opens on its runs.
        wait.until(ready.element_to_be_clickable((By.XPATH, "//*[normalize-space()='Model training' and "
                                                            "not(*[normalize-space()='Model training'])]"))).click()
        wait.until(ready.url_contains(f"/experiments/{experiment}/runs"))
        # The pipeline run, folded; its expander unfolds the stage runs nested under it.
        pipeline = link(f"pipeline {RUN}")
        pipeline.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]//button").click()
        datamix = link("datamix")
        link("scout.gate")
        shows("corpus (data:")  # the Dataset column: what datamix read
        browser.save_screenshot(str(shots / "1-runs.png"))

        step = "stage run"
        datamix.click()
        shows("Parent run")
        shows(f"pipeline {RUN}")
        shows("corpus (data:")  # the run page's Datasets
        browser.save_screenshot(str(shots / "2-datamix.png"))
        browser.find_element(By.XPATH, "//*[@role='tab' and normalize-space()='Artifacts']").click()
        wait.until(ready.element_to_be_clickable((By.XPATH, "//*[normalize-space()='plots']"))).click()
        wait.until(ready.element_to_be_clickable(
            (By.XPATH, "//*[normalize-space()='language_coverage.png']"))).click()
        shows("plots/language_coverage.png")
        wait.until(lambda b: any((img.get_attribute("src") or "").startswith(("blob:", "data:image/png"))
                                 and img.size["width"] > 200 for img in b.find_elements(By.TAG_NAME, "img")))
        browser.save_screenshot(str(shots / "3-plot.png"))

        step = "registered model"
        link("Model registry").click()
        link("herd-scout")
        try:  # the registry's first visit offers its new, alias-based UI in a dialog: taken
            WebDriverWait(browser, 10).until(ready.element_to_be_clickable(
                (By.XPATH, "//button[normalize-space()='Try it now']"))).click()
        except TimeoutException:
            pass
        link("herd-scout").click()
        shows("candidate")
        link("Version 1")
        browser.save_screenshot(str(shots / "4-herd-scout.png"))
    except Exception:
        browser.save_screenshot(str(shots / f"failed-at-{step.replace(' ', '-')}.png"))
        raise

    # What the pages showed is what the store holds: the version links back to the gate's run, nested in browse-1.
    client = browsed_store["client"]
    version = client.get_model_version("herd-scout", "1")
    gate_run = client.get_run(version.run_id)
    assert version.aliases == ["candidate"] and version.run_id == browsed_store["gate"]["mlflow_run_id"]
    assert gate_run.info.run_name == "scout.gate" and gate_run.data.tags["herd.run_id"] == RUN
    assert all((shots / name).stat().st_size > 10_000 for name in ("1-runs.png", "3-plot.png", "4-herd-scout.png"))
