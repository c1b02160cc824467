"""llama4_pipeline on a real Airflow 3, used as a user would: the REST API v2, then the UI in headless Chromium.

One Airflow serves both tests (see ``live_airflow.py``): PostgreSQL where it answers, else sqlite.
The REST test selects the data stages only, on a fresh ``HERD_HOME``: they compute and log to
MLflow, the stages left out have no output to reuse and nothing selected needs them, so they
are skipped and the run succeeds. A second run selects a stage whose left-out upstream has no
output: that upstream fails the run, naming what to select.

    .venv/bin/python -m pytest -q -rP tests/test_airflow_live.py   # -rP prints the screenshot's path

The browser test needs Debian's ``chromium`` and ``chromium-driver`` and is skipped without them.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import pytest
from live_airflow import LiveAirflow, ThrowawayPostgres

from herd.pipeline import STAGES, STAGES_BY_ID

pytestmark = pytest.mark.slow

DAG_ID = "llama4_pipeline"
RUNS = f"/api/v2/dags/{DAG_ID}/dagRuns"
SELECTED = ["datamix", "tokenizer", "problems"]
OVERRIDES = {"tokenizer.vocab_size": 1024, "problems.count_arithmetic": 20, "problems.count_strings": 20,
             "problems.count_code": 5, "problems.count_translate": 10, "problems.count_language_id": 10,
             "problems.count_continue": 10}


@pytest.fixture(scope="module")
def airflow(udhr_subset, tmp_path_factory):
    root = tmp_path_factory.mktemp("live-airflow")
    # The seed corpus (the problems stage's UDHR input) is the test's subset, not a fetched one.
    env = {"HERD_HOME": str(root / "herd-home"), "HERD_CORPUS_URI": str(udhr_subset)}
    with ThrowawayPostgres() as postgres, LiveAirflow(root, env, postgres.url) as live:
        print(f"Airflow at {live.url} on {live.database}" + (f" ({postgres.why_not})" if postgres.why_not else ""))
        live.wait_for_dag(DAG_ID)
        yield live


def _runs(airflow: LiveAirflow) -> list[dict]:
    response = airflow.api("GET", RUNS)
    assert response.status_code == 200, response.text
    return response.json()["dag_runs"]


def test_bad_parameters_are_refused_at_trigger_and_start_no_run(airflow):
    before = len(_runs(airflow))
    for conf, field in [({"overrides": {"datamix.min_charz": 3}}, "datamix.min_charz"),
                        ({"overrides": {"tokenizer.vocab_size": "big"}}, "tokenizer.vocab_size"),
                        ({"stages": ["datamix", "pretrian"]}, "pretrian"),
                        ({"corpus": "relative/path"}, "relative/path"),
                        # The gate's required bars: removing them is refused with the first one named.
                        ({"overrides": {"gate.thresholds": {}}}, "sft.pruned_hard_pass1"),
                        ({"overrides": {"gate.champion_tolerance": 1e9}}, "gate.champion_tolerance")]:
        response = airflow.api("POST", RUNS, json={"logical_date": None, "conf": conf})
        assert response.status_code == 400, (conf, response.text)
        assert field in response.json()["detail"], (conf, response.text)
    assert len(_runs(airflow)) == before


def _left_out_roots(selected: list[str]) -> set[str]:
    """The stages left out whose upstream all ran: they look for an output to reuse and find none."""
    return {spec.id for spec in STAGES
            if spec.name not in selected and all(STAGES_BY_ID[up].name in selected for up in spec.upstream)}


def _task_states(airflow: LiveAirflow, run_id: str) -> dict[str, str]:
    instances = airflow.api("GET", f"{RUNS}/{run_id}/taskInstances", params={"limit": 100}).json()["task_instances"]
    return {ti["task_id"]: ti["state"] for ti in instances}


def _log(airflow: LiveAirflow, run_id: str, task: str) -> str:
    return airflow.api("GET", f"{RUNS}/{run_id}/taskInstances/{task}/logs/1", headers={"Accept": "application/json"}).text


def test_rest_trigger_computes_the_selected_stages_and_tracks_them_in_mlflow(airflow, udhr_subset, monkeypatch):
    assert airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
    conf = {"corpus": str(udhr_subset), "stages": SELECTED, "overrides": OVERRIDES}
    response = airflow.api("POST", RUNS, json={"logical_date": None, "conf": conf})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    assert response.json()["conf"]["stages"] == SELECTED

    run = airflow.wait_for_run(DAG_ID, run_id, timeout=900)
    states = _task_states(airflow, run_id)
    assert run["state"] == "success", states
    # The data mix's first pass runs as mapped tasks before its stage (herd_airflow.mapped).
    first_pass = ["datamix_shards", "datamix_map_arguments", "datamix_map", "datamix_reduce_arguments",
                  "datamix_reduce"]
    ran = ["begin", *first_pass, *SELECTED, "finish"]
    assert {task: states[task] for task in ran} == dict.fromkeys(ran, "success")
    assert {task for task, state in states.items() if state != "success"} == set(states) - set(ran)
    assert set(states.values()) == {"success", "skipped"}
    for task in _left_out_roots(SELECTED):
        assert "no selected stage needs it" in _log(airflow, run_id, task)

    xcom = airflow.api("GET", f"{RUNS}/{run_id}/taskInstances/datamix/xcomEntries/return_value").json()
    mix = Path(xcom["value"])
    assert mix.is_relative_to(Path(airflow.env["HERD_HOME"])) and (mix / "step.json").is_file()

    monkeypatch.setenv("HERD_HOME", airflow.env["HERD_HOME"])
    from tasks.runtime import tracking

    client = tracking.client()
    parent = tracking.find_parent(client, run_id)
    assert parent is not None and parent.info.status == "FINISHED"
    children = {child.data.tags["herd.stage"]: child for child in client.search_runs(
        [tracking.experiment_id(client)], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
    assert sorted(children) == sorted(SELECTED)
    assert all(child.info.status == "FINISHED" for child in children.values())
    assert children["datamix"].data.params["input.corpus"] == str(udhr_subset)
    assert children["datamix"].data.metrics["docs_kept"] > 0
    assert children["tokenizer"].data.params["vocab_size"] == "1024"


def test_a_selected_stage_whose_left_out_upstream_has_no_output_fails_the_run_saying_what_to_select(
        airflow, udhr_subset):
    # Runs after the test above: the data stages are cached, no model stage is.
    selected = ["midtrain"]
    conf = {"corpus": str(udhr_subset), "stages": selected, "overrides": OVERRIDES}
    response = airflow.api("POST", RUNS, json={"logical_date": None, "conf": conf})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    run = airflow.wait_for_run(DAG_ID, run_id, timeout=900)
    states = _task_states(airflow, run_id)
    assert run["state"] == "failed", states
    assert {task: states[task] for task in ["datamix", "tokenizer", "problems"]} == dict.fromkeys(
        ["datamix", "tokenizer", "problems"], "success")  # left out, and reused
    assert states["behemoth.pretrain"] == "failed" and states["scout.midtrain"] == "upstream_failed"
    assert "a selected stage needs it; select it or run it first" in _log(airflow, run_id, "behemoth.pretrain")
    assert states["finish_failed"] == "success" and states["finish"] == "upstream_failed"


def test_ui_trigger_form_starts_a_run_with_the_parameters_typed_in(browser, airflow, udhr_subset, tmp_path,
                                                                   record_property):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 90)  # the React app renders slowly on two busy cores
    screenshot = tmp_path / "llama4_pipeline-triggered.png"
    try:
        browser.get(f"{airflow.url}/dags/{DAG_ID}")
        wait.until(ready.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(airflow.password)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

        wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
        submit = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")))
        # The defaults alone are a valid trigger: no field the user may leave empty holds the button back.
        wait.until(lambda _: submit.is_enabled())

        stages = browser.find_element(By.CSS_SELECTOR, "input[aria-label='Select one or multiple values']")
        stages.find_element(By.XPATH, "following::button[@aria-label='Clear selected options'][1]").click()
        stages.send_keys("datamix")
        stages.send_keys(Keys.ENTER)
        chosen = [e.get_attribute("value") for e in browser.find_elements(By.NAME, "element_stages")]
        assert chosen == ["datamix"]
        _type_into(browser.find_element(By.NAME, "element_corpus"), str(udhr_subset))
        wait.until(lambda _: submit.is_enabled())
        submit.click()

        wait.until(ready.url_contains(f"/dags/{DAG_ID}/runs/"))
        run_id = unquote(browser.current_url.rsplit("/runs/", 1)[1])
        # The run's page: its header names the run and who triggered it.
        wait.until(ready.text_to_be_present_in_element((By.TAG_NAME, "body"), run_id))
        wait.until(ready.text_to_be_present_in_element((By.TAG_NAME, "body"), "Triggering User"))
    finally:
        browser.save_screenshot(str(screenshot))

    run = airflow.api("GET", f"{RUNS}/{run_id}").json()
    assert run["run_type"] == "manual" and run["triggering_user_name"] == "admin"
    assert run["conf"]["corpus"] == str(udhr_subset) and run["conf"]["stages"] == ["datamix"]
    assert screenshot.stat().st_size > 10_000
    record_property("screenshot", str(screenshot))
    print(f"screenshot: {screenshot}")


def _type_into(field, text: str) -> None:
    """Types ``text`` key by key as a user would, waiting for each key to show: on two busy cores the React form
    re-renders from its state between keys and has dropped one (a run that typed ``subset.jsonl`` submitted
    ``subet.jsonl``, three times over when typed whole)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    typed = field.get_attribute("value") or ""
    for key in text:
        for _ in range(3):
            field.send_keys(key)
            try:
                WebDriverWait(field.parent, 5).until(lambda _: field.get_attribute("value") == typed + key)
                break
            except TimeoutException:
                if field.get_attribute("value") != typed:
                    raise AssertionError(f"typing {key!r} after {typed!r} left {field.get_attribute('value')!r}")
        else:
            raise AssertionError(f"the field took no {key!r} after {typed!r} in three tries")
        typed += key
