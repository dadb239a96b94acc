"""The who-wrote-what page of `specfuse serve` in a real browser: headless Chromium (Debian's package)
driven by Selenium through chromedriver, against a server on 127.0.0.1.

Run with the tiny random models (fast) and with the real default ensemble (slow: real words, the
screenshot the README shows). Screenshots go to build/test-artifacts/ (or $SPECFUSE_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from server_harness import ServerProcess, shared_tiny_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,860")  # fmt: skip
ARTIFACTS = Path(os.environ.get("SPECFUSE_TEST_ARTIFACTS", Path(__file__).parents[2] / "build" / "test-artifacts"))
QUESTION = "Why is the sky blue? Answer in two sentences."
SETTINGS = {"max_tokens": 48, "temperature": 0, "segment_tokens": 6}


@pytest.fixture(params=["tiny", pytest.param("default", marks=pytest.mark.slow)])
def served(request, tmp_path_factory):
    if request.param == "tiny":  # the session's tiny server, which needs an API key: typed into the page
        yield request.param, shared_tiny_server(request, tmp_path_factory)
        return
    srv = ServerProcess([], tmp_path_factory.mktemp("page") / "serve.log", ready_timeout=900)  # the default ensemble
    yield request.param, srv
    assert srv.stop() == 0, srv.log()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.mark.browser  # tests/conftest.py skips (or fails) it without Chromium and chromedriver
def test_page_streams_colored_segments_and_shows_round_details(served, browser):
    kind, srv = served
    browser.get(srv.url + "/")
    wait = WebDriverWait(browser, 60)
    if srv.api_key:
        wait.until(lambda d: d.find_element(By.ID, "model").text == "enter the API key")
        key = browser.find_element(By.ID, "key")
        key.send_keys(srv.api_key)
        browser.find_element(By.ID, "prompt").click()  # the key field's change event reloads the models
    wait.until(lambda d: d.find_element(By.ID, "model").text == "model specfuse")
    members = [c.text.split(" · ")[0] for c in browser.find_elements(By.CSS_SELECTOR, "#legend .chip")]
    assert len(members) == 2

    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(QUESTION)
    for field, value in SETTINGS.items():
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 600).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error", "stopped"))
    status = browser.find_element(By.ID, "status")
    assert status.get_attribute("data-state") == "done", status.text

    # The same request through the API (greedy): the colored segments join to exactly its text.
    reference = httpx.post(srv.url + "/v1/chat/completions", timeout=600, headers=srv.headers, json={
        "model": "specfuse", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": SETTINGS["max_tokens"],
        "temperature": 0, "specfuse": {"segment_tokens": SETTINGS["segment_tokens"]}}).json()  # fmt: skip
    final = reference["choices"][0]["message"]["content"]
    segments = browser.find_elements(By.CSS_SELECTOR, "#answer .seg")
    joined = browser.execute_script("return [...document.querySelectorAll('#answer .seg')].map(s => s.textContent).join('')")
    assert joined == final and final
    assert len(segments) == reference["specfuse"]["rounds"]
    assert f"{len(segments)} rounds" in status.text

    # Each segment is colored by its winner, with that member's legend color.
    legend = {chip.text.split(" · ")[0]: chip.find_element(By.CSS_SELECTOR, ".swatch").value_of_css_property("background-color")
              for chip in browser.find_elements(By.CSS_SELECTOR, "#legend .chip")}  # fmt: skip
    for segment in segments:
        winners = segment.get_attribute("data-winners").split(",")
        assert set(winners) <= set(members)
        if len(winners) == 1:
            assert segment.value_of_css_property("background-color") == legend[winners[0]]
        else:
            assert "gradient" in segment.value_of_css_property("background-image")
    wins = {name: 0 for name in members}
    for segment in segments:
        for name in segment.get_attribute("data-winners").split(","):
            wins[name] += 1
    assert wins == reference["specfuse"]["wins"]
    bar = {part.get_attribute("data-member"): int(part.text) for part in browser.find_elements(By.CSS_SELECTOR, "#wins div")}
    assert bar == {name: n for name, n in wins.items() if n}

    # Hovering a contested segment shows its candidates, every scorer's score and the round's exits.
    contested = None
    for segment in segments:
        ActionChains(browser).move_to_element(segment).perform()
        rows = browser.find_elements(By.CSS_SELECTOR, "#details table.candidates tr")
        if len(rows) >= 3:
            contested = segment
            break
    assert contested is not None, "no round with two candidates"
    details = browser.find_element(By.ID, "details")
    assert details.find_element(By.TAG_NAME, "h2").get_attribute("textContent").startswith(f"Round {contested.get_attribute('data-round')}")
    header = [th.text for th in details.find_elements(By.CSS_SELECTOR, "table.candidates tr th")]
    assert header[:2] == ["candidate", "by"] and header[-1] == "total"
    scorers = [th.get_attribute("data-scorer") for th in details.find_elements(By.CSS_SELECTOR, "th[data-scorer]")]
    assert sorted(scorers) == sorted(members) and len(header) == 3 + len(scorers)  # one column per scorer
    for row in details.find_elements(By.CSS_SELECTOR, "table.candidates tr")[1:]:
        cells = row.find_elements(By.TAG_NAME, "td")
        assert len(cells) == len(header)
        assert all(cell.text == "–" or float(cell.text) == float(cell.text) for cell in cells[2:])  # numbers
    winner_rows = details.find_elements(By.CSS_SELECTOR, "tr.winner")
    assert len(winner_rows) == 1 and winner_rows[0].text.startswith("✓")
    assert "exit" in details.text  # "no exits this round" or the exits
    assert "selected" in contested.get_attribute("class")

    # Tapping another segment switches the details to that round.
    other = segments[0] if contested != segments[0] else segments[1]
    other.click()
    assert details.find_element(By.TAG_NAME, "h2").get_attribute("textContent").startswith(f"Round {other.get_attribute('data-round')}")
    ActionChains(browser).move_to_element(contested).perform()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"server_page_{kind}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
