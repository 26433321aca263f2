"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

Move the alpha slider, send a prompt and see the streamed answer at that alpha; then the compare
view answers one prompt at several alphas side by side. Skips (saying why) where no Chromium is
installed; `make setup` installs it wherever apt runs as root, as in CI.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

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
