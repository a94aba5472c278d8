"""webUI.py started as a user would and driven in headless Chromium: convert an upload, a bad upload's message.

Needs Debian's chromium and chromium-driver (.ci/run installs them); skips with the reason where they are absent.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from conftest import ASSETS, REPO
from tests.tiny_model import add_content_encoder, save_model

pytestmark = [pytest.mark.shared, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
RECORDING = ASSETS / "audio" / "speech" / "LJ001-0001.wav"
STARTUP_SECONDS = 180
CONVERT_SECONDS = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    """webUI.py in a subprocess on a free loopback port, logs/tiny holding the tiny model."""
    root = tmp_path_factory.mktemp("webui_browser")
    (root / "logs" / "tiny").mkdir(parents=True)
    save_model(root / "logs" / "tiny")
    add_content_encoder(root)
    port = free_port()
    log_path = root / "webui.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "webUI.py"), "--port", str(port), "--logs_dir", "logs",
                                    "-d", "cpu"], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_served(process, url, log_path)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_served(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"webUI.py exited {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"webUI.py did not answer within {STARTUP_SECONDS} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"no headless browser: needs {CHROMIUM} and {CHROMEDRIVER} "
                    "(apt-get install chromium chromium-driver; .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1500", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition, seconds: float, what: str, driver):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {seconds} s; page text:\n{page_text(driver)[-3000:]}")


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def open_page(driver, url: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_elements(By.ID, "convert"), 60, "the page loading", driver)
    wait_for(lambda: "no diffusion model in this folder" in page_text(driver), 30, "the model folder loading", driver)


def upload_and_convert(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, "#input-audio input[type=file]").send_keys(str(path))
    time.sleep(1)
    driver.find_element(By.ID, "convert").click()


PLAYER_STATE = """
const root = document.querySelector('#output-audio');
const players = [...root.querySelectorAll('audio')];
for (const element of root.querySelectorAll('*')) if (element.shadowRoot) players.push(...element.shadowRoot.querySelectorAll('audio'));
return players.filter(a => a.src && a.readyState >= 1).map(a => [a.duration, a.readyState]);
"""

DECODED = """
const done = arguments[arguments.length - 1];
const link = document.querySelector('#output-audio a[href]');
if (!link) { done('no download link'); return; }
fetch(link.href).then(r => r.arrayBuffer()).then(b => new AudioContext().decodeAudioData(b))
  .then(x => done([x.duration, x.sampleRate])).catch(e => done('error ' + e));
"""


def test_convert_an_uploaded_recording(browser, page_url, tmp_path):
    from selenium.webdriver.common.by import By

    open_page(browser, page_url)
    upload_and_convert(browser, RECORDING)
    players = wait_for(lambda: browser.execute_script(PLAYER_STATE), CONVERT_SECONDS, "a playable result", browser)
    info = sf.info(str(RECORDING))
    seconds = info.frames / info.samplerate
    duration, ready = players[0]
    assert abs(duration - seconds) < 0.05 and ready >= 1
    decoded = browser.execute_async_script(DECODED)
    assert isinstance(decoded, list), decoded
    assert abs(decoded[0] - seconds) < 0.02 and decoded[1] == 44100
    status = browser.find_element(By.CSS_SELECTOR, "#convert-status textarea").get_attribute("value")
    assert status.startswith(f"{seconds:.2f} s in, {seconds:.2f} s out at 44100 Hz")
    plot = browser.find_elements(By.CSS_SELECTOR, "#pitch-plot img")
    assert plot and plot[0].get_attribute("src")
    shot = tmp_path / "webui.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_a_bad_upload_shows_a_message(browser, page_url, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("these are words, not samples\n" * 50)
    open_page(browser, page_url)
    upload_and_convert(browser, fake)
    message = "the uploaded file 'notes.wav' is not audio that can be read"
    wait_for(lambda: message in page_text(browser), 60, "the error message", browser)
    source = browser.page_source
    assert "Traceback" not in source and 'File "' not in source
    assert not browser.execute_script(PLAYER_STATE)
