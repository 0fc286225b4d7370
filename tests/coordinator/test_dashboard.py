"""The operator's dashboard in a real headless Chromium, over a real coordinator and real workers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from procs import RmaProcess, start_coordinator, start_worker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("Debian's chromium and chromium-driver are needed: `make test` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # Headless, and no background traffic: this machine has no network but loopback.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def attribute(browser: WebDriver, selector: str, name: str) -> str | None:
    """Read in one script call: the page re-renders every second, so a held element may be gone."""
    value = browser.execute_script(
        "const node = document.querySelector(arguments[0]); return node ? node.getAttribute(arguments[1]) : null;",
        selector, name)
    return None if value is None else str(value)


def status_of(browser: WebDriver, service: str) -> str | None:
    return attribute(browser, f'[data-service="{service}"]', "data-status")


def test_dashboard_shows_the_pool_live(browser: WebDriver, tmp_path: Path, processes: list[RmaProcess]) -> None:
    coordinator, url = start_coordinator(tmp_path)
    processes.append(coordinator)
    storage = start_worker(processes, tmp_path, url, "storage", "store-1")
    start_worker(processes, tmp_path, url, "edge", "edge-1")
    browser.get(url + "/")

    def both_workers_shown() -> bool:
        shown = browser.execute_script(
            "return [...document.querySelectorAll('#workers tbody tr')].map(r => r.dataset.worker).sort();")
        return bool(shown == ["edge-1", "store-1"])

    wait_until(both_workers_shown, 30, what="both workers on the page")
    wait_until(lambda: status_of(browser, "redis") == "ok", 30, what="redis ok on the page")
    assert browser.execute_script("return document.querySelectorAll('[data-service]').length;") == 14
    minio = browser.execute_script("return document.querySelector('[data-service=\"minio\"]').innerText;")
    assert "engine minio not available" in minio  # an uncovered service says why
    assert "store-1" in browser.execute_script("return document.getElementById('events').innerText;")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

    storage.kill9()
    # Without a reload: redis turns critical once the coordinator has marked its worker down.
    wait_until(lambda: status_of(browser, "redis") == "critical", 10, what="redis critical after the kill")
    wait_until(lambda: attribute(browser, '[data-worker="store-1"]', "data-healthy") == "false", 10,
               what="store-1 shown down")
    browser.save_screenshot(str(ARTIFACTS / "dashboard-after-kill.png"))


def test_dashboard_asks_for_the_admin_token(browser: WebDriver, tmp_path: Path,
                                            processes: list[RmaProcess]) -> None:
    coordinator, url = start_coordinator(tmp_path, env={"RMA_ADMIN_TOKEN": "adm-9q"})
    processes.append(coordinator)
    browser.get(url + "/")
    login = browser.find_element(By.ID, "login")
    wait_until(login.is_displayed, 10, what="the token form")
    assert not browser.find_element(By.ID, "pool").is_displayed()
    token = browser.find_element(By.ID, "token")
    token.send_keys("wrong")
    token.submit()
    wait_until(lambda: "admin" in browser.find_element(By.ID, "login-error").text, 10, what="a refusal")
    token.clear()
    token.send_keys("adm-9q")
    token.submit()
    wait_until(lambda: browser.find_element(By.ID, "pool").is_displayed(), 10, what="the pool after the token")
    wait_until(lambda: browser.execute_script("return document.querySelectorAll('[data-service]').length;") == 14,
               10, what="the services after the token")
