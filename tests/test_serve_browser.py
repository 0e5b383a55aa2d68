"""The chat page of `hfscratch serve` in a real headless browser (Debian's chromium, driven by Selenium).

A person's path: open the page, set a system prompt and temperature 0, type a message, watch the reply stream in,
and reset. The expected reply comes from transformers' greedy `generate` on the same conversation.
`.ci/run` installs chromium and chromium-driver when they are missing; set HFSCRATCH_SCREENSHOT=path.png to keep
the screenshot (docs/serve_chat.png was made that way).
"""

import os
import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.test_serve import NAME, chat_ids, free_port, greedy, model_folder, reference, start_server, wait_healthy  # noqa: F401

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def page_server(model_folder):  # noqa: F811
    port = free_port()
    process = start_server(model_folder, port)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(process, base)
    yield base
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        why = "the browser test needs Debian's chromium and chromedriver: apt-get install chromium chromium-driver"
        if os.environ.get("CI"):  # .ci/run installs them, so in CI their absence is a failure, not a skip
            pytest.fail(why)
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,720"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def send(browser, text: str) -> str:
    """Type `text`, press Send, and return the assistant's reply once the stream has ended."""
    before = len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    browser.find_element(By.ID, "input").send_keys(text)
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(
        lambda b: len(done := b.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='true']")) > before and done)
    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].get_attribute("textContent")


def test_chat_page_streams_a_reply_then_resets(page_server, browser, reference, tmp_path):  # noqa: F811
    model, tokenizer = reference
    browser.get(page_server)
    assert NAME in browser.title
    browser.find_element(By.TAG_NAME, "summary").click()  # open the settings
    browser.find_element(By.ID, "system").send_keys("Speak in verse.")
    browser.execute_script("const t = document.getElementById('temperature'); t.value = '0'; t.oninput();")
    browser.find_element(By.ID, "max-tokens").send_keys("24")
    # Count how the reply arrives: the page appends each streamed delta to the reply's text node.
    browser.execute_script("""
        window.updates = 0;
        new MutationObserver(() => window.updates++).observe(document.getElementById('log'),
                                                              {subtree: true, characterData: true, childList: true});""")
    first = [{"role": "system", "content": "Speak in verse."}, {"role": "user", "content": "Who goes there?"}]
    reply = send(browser, "Who goes there?")
    expected, _ = greedy(model, tokenizer, chat_ids(tokenizer, first), 24)
    assert reply == expected and reply.strip()
    assert browser.execute_script("return window.updates") >= 4, "the reply did not arrive in pieces"

    # The second turn carries the first one as history.
    second = first + [{"role": "assistant", "content": expected}, {"role": "user", "content": "Stand and unfold."}]
    reply_two = send(browser, "Stand and unfold.")
    expected_two, _ = greedy(model, tokenizer, chat_ids(tokenizer, second), 24)
    assert reply_two == expected_two

    screenshot = tmp_path / "serve_chat.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("HFSCRATCH_SCREENSHOT"):
        shutil.copy(screenshot, Path(os.environ["HFSCRATCH_SCREENSHOT"]))

    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    assert send(browser, "Who goes there?") == reply  # history forgotten: the first answer again
