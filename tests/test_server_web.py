"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

Move the alpha slider, send a prompt and see the streamed answer at that alpha; then the compare
view answers one prompt at several alphas side by side; then the teach view labels pairs of
answers (clicks and keys), trains a dial on them with the smallest settings and serves it.
Skips (saying why) where no Chromium is installed; `make setup` installs it wherever apt runs as
root, as in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import ServerProcess

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium/chromedriver installed (make setup installs them with apt as root)",
)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]  # fmt: skip
WAIT_S = 180


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess("--ctx", "512", "--parallel", "3")
    yield process
    assert process.stop() == 0, process.errors()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with tempfile.TemporaryDirectory(prefix="clm-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def set_number(driver: webdriver.Chrome, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def test_chat_at_the_slider_alpha(server: ServerProcess, browser: webdriver.Chrome) -> None:
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(lambda d: d.find_element(By.ID, "model-name").text.startswith("SmolLM2"))
    slider = browser.find_element(By.ID, "alpha")
    assert slider.get_attribute("value") == "1"  # the file's default
    for _ in range(5):
        slider.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element(By.ID, "alpha-value").text == "1.5"
    set_number(browser, "max-tokens", "12")
    browser.find_element(By.ID, "prompt").send_keys("What is the capital of France?")
    browser.find_element(By.ID, "send").click()
    answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".message.assistant[data-done='true']"))
    assert answer.get_attribute("data-finish") in ("stop", "length")
    assert answer.find_element(By.CLASS_NAME, "text").text.strip()
    assert int(answer.get_attribute("data-pieces")) > 1  # it arrived in pieces, as streamed
    assert "alpha 1.5 · logits" in answer.find_element(By.CLASS_NAME, "meta").text
    assert not browser.find_element(By.ID, "error").is_displayed()


def test_compare_shows_one_answer_per_alpha(server: ServerProcess, browser: webdriver.Chrome) -> None:
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, WAIT_S)
    browser.find_element(By.ID, "tab-compare").click()
    assert browser.find_element(By.ID, "compare-view").is_displayed()
    set_number(browser, "max-tokens", "12")
    set_number(browser, "compare-alphas", "0, 1, 2.5")
    browser.find_element(By.ID, "compare-run").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".column[data-done='true']")) == 3)
    columns = browser.find_elements(By.CSS_SELECTOR, "#compare-results .column")
    assert [c.get_attribute("data-alpha") for c in columns] == ["0", "1", "2.5"]
    answers = [c.find_element(By.CLASS_NAME, "answer").text.strip() for c in columns]
    assert all(answers), answers
    assert all(c.get_attribute("data-finish") in ("stop", "length") for c in columns)
    assert len(set(answers)) > 1  # the dial changes the answer


# -- Teach: label pairs in the page, train a dial, switch to it ------------------------------------

# The smallest run the teach settings allow: 3 pairs (one held out), no SFT, one DPO step.
TINY_TEACH = {
    "needed": 3, "min_held_out": 1, "held_out_share": 0.2, "target_steps": 1, "min_epochs": 1,
    "max_epochs": 1, "sft_epochs": 0, "batch_size": 2, "max_length": 64,
}  # fmt: skip


@pytest.fixture(scope="module")
def teach_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A tiny random llama base with a real tokenizer and chat template (tests/tiny_hf.py): its
    answers are noise, but training it and loading the dial take seconds, not minutes."""
    from tiny_hf import make_tiny_model, write_tiny_gguf

    root = tmp_path_factory.mktemp("teach")
    base = write_tiny_gguf(make_tiny_model(root / "hf", "llama", expanded=False), root / "tiny-base.gguf")
    env = dict(os.environ, CLM_LOCAL_TEACH_SETTINGS=json.dumps(TINY_TEACH))
    process = ServerProcess(
        str(base), "--ctx", "256", "--parallel", "2", "--data-dir", str(root / "data"), env=env
    )
    yield process
    assert process.stop() == 0, process.errors()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def answer_twice(browser: webdriver.Chrome, wait: WebDriverWait, prompt: str) -> tuple[str, str]:
    """Ask for two answers to `prompt`; their texts once both are whole and pickable. Two seeds
    can give the same short answer (the page then offers only tie and skip): ask again."""
    for _ in range(4):
        field = browser.find_element(By.ID, "teach-prompt")
        field.clear()
        field.send_keys(prompt)
        browser.find_element(By.ID, "teach-ask").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#teach-pair [data-done='true']")) == 2)
        if browser.find_element(By.ID, "teach-pair").get_attribute("data-ready") == "true":
            a, b = (browser.find_element(By.CSS_SELECTOR, f"#teach-{s} .answer").text for s in "ab")
            return a, b
        browser.find_element(By.ID, "teach-skip").click()
    raise AssertionError("four pairs of identical answers")


def count(browser: webdriver.Chrome) -> int:
    return int(browser.find_element(By.ID, "teach-count").get_attribute("data-count"))


def test_teach_pairs_then_a_dial(teach_server: ServerProcess, browser: webdriver.Chrome) -> None:
    browser.get(teach_server.url + "/")
    wait = WebDriverWait(browser, WAIT_S)
    browser.find_element(By.ID, "tab-teach").click()
    assert browser.find_element(By.ID, "teach-view").is_displayed()
    assert not browser.find_element(By.ID, "alpha").is_displayed()  # teach samples at alpha 0
    wait.until(lambda d: d.find_element(By.ID, "teach-count").get_attribute("data-count") == "0")
    assert "training needs 3" in browser.find_element(By.ID, "teach-count").text
    assert browser.find_element(By.ID, "teach-train").get_property("disabled")
    set_number(browser, "max-tokens", "12")

    # A click on "A is better": the pair is on disk at once and the counter moves.
    prompt = "Give me one tip for sleeping well."
    a, b = answer_twice(browser, wait, prompt)
    assert a and b and a != b
    browser.find_element(By.ID, "teach-pick-a").click()
    wait.until(lambda d: count(d) == 1)
    state = get_json(teach_server.api + "/clm/preferences")
    assert state["count"] == 1
    saved = [json.loads(line) for line in Path(state["path"]).read_text().splitlines()]
    assert saved[-1]["prompt"] == prompt
    assert " ".join(saved[-1]["chosen"].split()) == " ".join(a.split())
    assert " ".join(saved[-1]["rejected"].split()) == " ".join(b.split())

    # Keys: typed into the prompt they are text; on the page 2 picks B, T is a tie (nothing saved).
    answer_twice(browser, wait, "Name 2 fruits, then say t and 1.")
    assert count(browser) == 1
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("t")
    assert browser.find_element(By.ID, "teach-pair").get_attribute("data-ready") == "false"
    assert count(browser) == 1
    for question in ("How do I boil an egg?", "What is a rainbow?"):
        answer_twice(browser, wait, question)
        browser.find_element(By.TAG_NAME, "body").send_keys("2")
    wait.until(lambda d: count(d) == 3)
    assert "ready to train" in browser.find_element(By.ID, "teach-count").text

    # Train: progress shows, the run ends, and the new dial can be served.
    train = browser.find_element(By.ID, "teach-train")
    wait.until(lambda d: train.is_enabled())
    train.click()
    progress = browser.find_element(By.ID, "teach-progress")
    wait.until(lambda d: progress.get_attribute("data-state") in ("running", "done"))
    assert progress.text.startswith(("training", "trained"))
    wait.until(lambda d: progress.get_attribute("data-state") != "running")
    assert progress.get_attribute("data-state") == "done", browser.find_element(By.ID, "teach-error").text
    dial = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#teach-dials li.dial"))
    name = dial.get_attribute("data-name")
    assert "3 pairs" in dial.text

    # "use": back to the model served at start, then the new dial again (hot swaps).
    start = browser.find_element(By.CSS_SELECTOR, "#teach-dials li.start")
    if "active" not in start.get_attribute("class"):
        start.find_element(By.CLASS_NAME, "use").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#teach-dials li.start.active"))
        assert get_json(teach_server.api + "/clm/dials")["active"] is None
    browser.find_element(By.CSS_SELECTOR, f"#teach-dials li.dial[data-name='{name}'] .use").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#teach-dials li.dial.active"))
    assert get_json(teach_server.api + "/clm/dials")["active"] == name
    assert not browser.find_element(By.ID, "teach-error").is_displayed()
