"""The operator's dashboard in a real headless Chromium, over a real coordinator and real workers."""

from __future__ import annotations

import contextlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from procs import RmaProcess, start_coordinator, start_worker, wait_until
from rma.mesh.pki import make_node_keys
from routing.pool import routed, start_backend, start_router

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
    llm = browser.execute_script("return document.querySelector('[data-service=\"llm-inference\"]').innerText;")
    assert "needs gpu worker" in llm  # an uncovered service says why, in short, with the whole reason as its title
    assert "needs a worker of kind gpu" in browser.execute_script(
        "return document.querySelector('[data-service=\"llm-inference\"] .reason').title;")
    redis_card = "return document.querySelector('[data-service=\"redis\"]').innerText;"
    assert "engine: redis-server" in browser.execute_script(redis_card)
    assert "store-1" in browser.execute_script("return document.getElementById('events').innerText;")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-pool.png"))

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


@contextlib.contextmanager
def beating(url: str, worker_id: str, machine: dict[str, float]) -> Iterator[None]:
    """A worker that runs nothing and beats every 0.3 s with the figures in `machine` (change them to move
    its charts)."""
    caps = {"worker_type": "storage", "engines": [], "cpu_cores": 8, "ram_mb": 32768}
    token = httpx.post(f"{url}/api/worker/register", json={"worker_id": worker_id, "capabilities": caps}).json()[
        "worker_token"]
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.3):
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{url}/api/worker/heartbeat", json={"worker_id": worker_id, **machine},
                           headers={"Authorization": f"Bearer {token}"}, timeout=2)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def chart(browser: WebDriver, selector: str) -> dict[str, Any]:
    """A chart as drawn: its points (from the data), newest value, and the coordinates its polylines hold."""
    drawn = browser.execute_script("""
        const svg = document.querySelector(arguments[0]);
        if (!svg) return {points: 0, last: null, drawn: 0};
        const pairs = [...svg.querySelectorAll('polyline')].map(p => p.getAttribute('points').trim().split(' '));
        const last = svg.dataset.last === undefined ? null : Number(svg.dataset.last);
        return {points: Number(svg.dataset.points), last, drawn: pairs.reduce((n, p) => n + p.length, 0)};""", selector)
    return dict(drawn)


def totals(url: str, service: str) -> tuple[int, int]:
    """Requests and 5xx answers of `service` in the coordinator's history, over every settled step."""
    history = httpx.get(f"{url}/api/admin/history", timeout=5).json()
    series, step = history["services"][service], history["step_s"]
    return round(sum(series["rps"]) * step), round(sum(series["errors"]) * step)


def test_dashboard_charts_the_last_hour_from_live_figures(browser: WebDriver, tmp_path: Path,
                                                          processes: list[RmaProcess]) -> None:
    """A real load balancer's traffic report and a worker's heartbeats become the charts, step by step."""
    coordinator, url = start_coordinator(tmp_path)
    processes.append(coordinator)
    start_backend(processes, tmp_path, "ner-1", url, "ner-extraction")
    balancer = start_router(processes, tmp_path, "load-balancer", url)
    routed(balancer, "ner-extraction", 1)
    machine = {"cpu_percent": 20.0, "ram_percent": 35.0, "current_load": 0.2}
    rps = '[data-service="ner-extraction"] svg[data-series="rps"]'
    cpu = '[data-worker="metrics-1"] svg[data-series="cpu"]'
    with beating(url, "metrics-1", machine), httpx.Client(base_url=f"{balancer}/service/ner-extraction") as lb:
        for _ in range(30):
            assert lb.get("/kb").status_code == 200
        browser.set_window_size(1400, 1250)
        browser.get(url + "/")
        # The report reached the coordinator (every request counted once), and its step is drawn.
        wait_until(lambda: totals(url, "ner-extraction") == (30, 0), 60, what="30 requests in the history")
        wait_until(lambda: (chart(browser, rps)["last"] or 0) > 0, 20, what="a requests/s point on the card")
        wait_until(lambda: chart(browser, cpu)["last"] == 20.0, 30, what="metrics-1 at 20 % CPU on its chart")
        first = chart(browser, cpu)
        assert first["drawn"] >= first["points"] >= 1
        assert chart(browser, '[data-service="ner-extraction"] svg[data-series="healthy"]')["last"] == 1
        assert (chart(browser, '[data-service="ner-extraction"] svg[data-series="latency"]')["last"] or 0) > 0
        before = chart(browser, rps)["points"]

        machine["cpu_percent"] = 80.0
        for _ in range(60):
            lb.get("/kb")
        for _ in range(5):
            assert lb.get("/status/500").status_code == 500
        # Without a reload: new steps arrive, with the new figures.
        wait_until(lambda: totals(url, "ner-extraction") == (95, 5), 60, what="95 requests, 5 of them 5xx")
        wait_until(lambda: chart(browser, cpu)["last"] == 80.0, 30, what="metrics-1 at 80 % CPU on its chart")
        later = chart(browser, cpu)
        assert later["points"] > first["points"] and later["drawn"] >= later["points"]
        wait_until(lambda: chart(browser, rps)["points"] > before, 20, what="more requests/s points")
        assert browser.execute_script(  # the 5xx answers raise the red line off the chart's floor
            "return Math.min(...[...document.querySelectorAll(arguments[0])].flatMap("
            "p => p.getAttribute('points').trim().split(' ').map(xy => Number(xy.split(',')[1]))));",
            rps + " polyline.errors") < 25
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))


@pytest.mark.skipif(shutil.which("nebula-cert") is None, reason="nebula-cert is not installed")
def test_dashboard_shows_each_workers_place_on_the_mesh(browser: WebDriver, tmp_path: Path,
                                                       processes: list[RmaProcess]) -> None:
    """A worker joined with its key, beating its tunnels (no Nebula runs: the coordinator only relays what
    the worker says), shown as `rma status --wide` shows it."""
    coordinator, url = start_coordinator(tmp_path, env={"RMA_MESH_NETWORK": "198.19.0.0/16"})
    processes.append(coordinator)
    joined = httpx.post(f"{url}/api/worker/register", timeout=10, json={
        "worker_id": "home-1", "mesh_public_key": make_node_keys(tmp_path / "home-1"),
        "capabilities": {"worker_type": "cpu", "engines": []}}).json()
    beat = httpx.post(f"{url}/api/worker/heartbeat", timeout=10,
                      headers={"Authorization": f"Bearer {joined['worker_token']}"},
                      json={"worker_id": "home-1", "mesh": {"direct": 2, "relayed": 1, "lighthouse_rtt_ms": 0.42}})
    assert beat.status_code == 200, beat.text
    browser.get(url + "/")
    line = "return (document.querySelector('[data-worker=\"home-1\"] .mesh') || {}).innerText;"
    wait_until(lambda: browser.execute_script(line), 30, what="home-1's mesh line on the page")
    assert browser.execute_script(line) == "mesh cpu · 2 direct, 1 relayed · lighthouse 0.4 ms"
