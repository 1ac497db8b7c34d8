"""What annotators see, in a real browser: ``make demo``'s project opened in headless Chromium (Debian's
``chromium`` and ``chromium-driver``, installed by ``scripts/system_packages.sh``; driven by selenium pointed at
those binaries, nothing downloaded at run time).

The demo script runs against the session's real Label Studio (``label_studio`` of conftest.py) with the packaged
SmolLM2 only (``tests/fixtures/demo_smollm2.yaml``) and pre-annotates its project through the backend's job. Then:

- through the API: the tasks hold no true label (no ``truth`` field), every task has exactly one prediction, the
  backend's views carry ``hiddenColumns`` and an unfiltered "All tasks" tab comes first;
- in the browser: the Data Manager lists every task with its prediction score and model version (computed, not
  empty), the "Needs review" tab too, no ``truth`` column; a task's labeling view shows the project's question,
  the predicted choice pre-selected and the prediction's score on its tab.

``LWC_UPDATE_SCREENSHOTS=1`` writes the screenshots to docs/figures/ (what docs/server.md shows); otherwise they go
to the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from label_studio_sdk.client import LabelStudio

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.e2e

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
QUESTION = "Is this SMS message spam?"
N_TASKS = 6


@pytest.fixture(scope="module")
def demo(label_studio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo script, kept running (``--exit-after``) while the test looks at its project."""
    folder = tmp_path_factory.mktemp("demo-browser")
    command = [
        sys.executable, str(REPO_ROOT / "scripts" / "demo.py"),
        "--config", str(REPO_ROOT / "tests" / "fixtures" / "demo_smollm2.yaml"),
        "--tasks", str(N_TASKS), "--backend-port", str(free_port()), "--model-dir", str(folder / "models"),
        "--ls-url", label_studio.url, "--ls-token", label_studio.token, "--exit-after", "900",
    ]  # fmt: skip
    out_path = folder / "demo.out"
    with out_path.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 600
        while "ready after" not in out_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the demo did not get ready:\n{out_path.read_text()[-4000:]}")
            time.sleep(0.5)
        text = out_path.read_text(errors="replace")
        found = re.search(r"Label Studio: +(http://\S+/projects/(\d+)/data)", text)
        assert found, text[-3000:]
        yield {"output": text, "project": int(found.group(2)), "url": found.group(1)}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser(label_studio: Any) -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("Debian's chromium and chromium-driver are missing: run scripts/system_packages.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    try:
        driver.get(f"{label_studio.url}/user/login/")
        driver.find_element(By.NAME, "email").send_keys(label_studio.username)
        driver.find_element(By.NAME, "password").send_keys(label_studio.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_until(driver, lambda: "/user/login" not in driver.current_url, "the login")
        yield driver
    finally:
        driver.quit()


def wait_until(driver: Any, condition: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except Exception:  # the page is still rendering: elements come and go
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} on {driver.current_url}")


def screenshot_folder(tmp_path: Path) -> Path:
    return REPO_ROOT / "docs" / "figures" if os.environ.get("LWC_UPDATE_SCREENSHOTS") == "1" else tmp_path


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"(?<![\w.])[01]\.\d+(?![\w.])", text)]


def test_annotators_see_the_question_the_preselected_prediction_and_its_score(
    demo: dict[str, Any], browser: Any, label_studio: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = demo["project"]
    assert "job 1 prelabel: 100%" in demo["output"] and f"{N_TASKS}/{N_TASKS}" in demo["output"]  # the bar
    tasks = list(client.tasks.list(project=project))
    assert len(tasks) == N_TASKS and all(set(t.data) == {"text"} for t in tasks), (
        "no true label in Label Studio"
    )
    predictions = {p.task: p for p in client.predictions.list(project=project)}
    assert sorted(predictions) == sorted(t.id for t in tasks)
    assert len(client.predictions.list(project=project)) == N_TASKS
    views = list(client.views.list(project=project))
    titles = [(v.data or {}).get("title") for v in views]
    assert titles[0] == "All tasks" and "Needs review" in titles
    for view in views:
        hidden = (view.data or {}).get("hiddenColumns") or {}
        assert hidden.get("explore") and hidden.get("labeling"), view.data
        assert "tasks:predictions_score" not in hidden["explore"]
    folder = screenshot_folder(tmp_path)

    # the Data Manager: every task, its prediction score and model version computed; no truth column
    browser.get(demo["url"])
    wait_until(
        browser, lambda: "Prediction score" in browser.find_element(By.TAG_NAME, "body").text, "the table"
    )
    scores = {round(p.score, 3) for p in predictions.values()}
    body = wait_until(
        browser,
        lambda: (
            (text := browser.find_element(By.TAG_NAME, "body").text)
            and scores <= {round(n, 3) for n in numbers(text)}
            and text
        ),
        "the prediction scores in the table",
    )
    version = next(iter(predictions.values())).model_version
    assert version in body and "truth" not in body and f"Tasks: {N_TASKS} / {N_TASKS}" in body
    browser.save_screenshot(str(folder / "annotator-data-manager.png"))

    # the "Needs review" tab computes the same columns (its view has hiddenColumns)
    review_view = views[titles.index("Needs review")]
    in_review = [p for p in predictions.values() if p.score < 0.7]
    browser.get(f"{demo['url']}?tab={review_view.id}")
    if in_review:
        wait_until(
            browser,
            lambda: (
                {round(p.score, 3) for p in in_review}
                <= {round(n, 3) for n in numbers(browser.find_element(By.TAG_NAME, "body").text)}
            ),
            "the review tab's scores",
        )
    browser.save_screenshot(str(folder / "annotator-needs-review.png"))

    # one task's labeling view: the question, the predicted choice pre-selected, the score on its tab
    task = tasks[0]
    prediction = predictions[task.id]
    (choice,) = prediction.result[0]["value"]["choices"]
    browser.get(f"{demo['url']}?task={task.id}")
    checked = wait_until(
        browser,
        lambda: [e.get_attribute("name") for e in browser.find_elements(By.CSS_SELECTOR, "input.ant-checkbox-input")
                 if e.is_selected()],
        "the labeling view's choices",
    )  # fmt: skip
    assert checked == [choice]
    text = browser.find_element(By.TAG_NAME, "body").text
    assert QUESTION in text and task.data["text"].split()[0] in text
    assert f"{prediction.score * 100:.2f}%" in text  # the prediction's tab: "<version> · 84.48%"
    browser.save_screenshot(str(folder / "annotator-labeling.png"))
