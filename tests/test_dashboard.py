"""The operator dashboard in a real headless browser (Debian's chromium driven by selenium): a coordinator
with agents, the page showing the fleet, and what it shows changing when a device goes offline."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from agent.agent import Agent
from agent.model_store import ModelStore
from agent.profile import parse_profile
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.registry import ModelState, RoundRecord, open_registry
from cloud.store import publish
from tests.agent_support import profile_doc
from tests.release_support import linear_cloud_store, linear_onnx

BROWSER, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    if BROWSER is None or DRIVER is None:
        pytest.fail("the dashboard test drives Debian's chromium and chromium-driver: `make install` installs"
                    " them as root (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _agent(tmp: Path, broker: Mosquitto, device: str, kind: str) -> Agent:
    doc = profile_doc(tmp / device, broker, samples=False, api_port=free_port(),
                      offload={"mode": "threshold", "metric": "max_prob", "threshold": 0.5})
    doc["device"] = {"id": device, "kind": kind}
    store = ModelStore(tmp / device / "state" / "models")
    publish(store, "mnist1d", "mnist1d-edge", linear_onnx(tmp / f"{device}.onnx", np.eye(40, 10)), metrics={})
    return Agent(parse_profile(yaml.safe_dump(doc), f"{device}.yaml", env={})).start()


def _row_states(driver: object) -> dict[str, str]:
    """Each device row's state as the page shows it, read in one script run (the page redraws every 2 s)."""
    return dict(driver.execute_script(  # type: ignore[attr-defined]
        "return Object.fromEntries([...document.querySelectorAll('#devices tbody tr[data-device]')]"
        ".map(row => [row.dataset.device, row.querySelector('[data-role=state]').textContent]))"))


def _text(driver: object) -> str:
    return str(driver.execute_script("return document.body.innerText"))  # type: ignore[attr-defined]


def _wait(what: str, check: object, timeout: float = 30, shown: object = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"the dashboard never showed {what}: {shown() if shown else ''}"  # type: ignore[operator]
        time.sleep(0.3)


def test_the_dashboard_shows_the_fleet_and_a_device_going_offline(tmp_path: Path, broker: Mosquitto,
                                                                  browser: object) -> None:
    registry_file = tmp_path / "registry.db"
    with open_registry(str(registry_file)) as registry:  # a rollout and a federated round, as earlier runs left them
        registry.add_model("mnist1d", "mnist1d-edge", 1, ModelState.ACTIVE, {"test_accuracy": 0.9})
        registry.add_model("mnist1d", "mnist1d-edge", 2, ModelState.CANARY, {"test_accuracy": 0.93})
        registry.record_round(RoundRecord("run-a", "mnist1d", 1, 3, 1, 0, 900, 0.912, 0.18, None, 4.2, time.time(),
                                          {}))
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "cloud.cli", "serve", "--broker", broker.url, "--workers", "1",
                              "--store", str(linear_cloud_store(tmp_path / "cloud")), "--registry",
                              str(registry_file), "--dashboard", str(port)],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    agents = [_agent(tmp_path, broker, "pi-kitchen", "raspberry-pi-4"), _agent(tmp_path, broker, "jetson-door",
                                                                                "jetson-nano")]
    driver = browser
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait("its page", lambda: _answers(url))
        driver.get(url)  # type: ignore[attr-defined]
        _wait("both devices online", lambda: _row_states(driver) == {"pi-kitchen": "online", "jetson-door": "online"},
              shown=lambda: driver.page_source)  # type: ignore[attr-defined]
        _wait("the devices' heartbeats", lambda: "raspberry-pi-4" in _text(driver) and "jetson-nano" in _text(driver),
              shown=lambda: _text(driver))
        page = _text(driver)
        assert "raspberry-pi-4" in page and "mnist1d v1" in page and "(2 of 2 online)" in page, page
        assert "v2 canary · 93.0 %" in page and "run-a · mnist1d" in page and "91.2 %" in page, page

        agents.pop().stop()  # a clean stop: the agent says offline (a crash would leave it to its Last Will)
        _wait("the stopped device offline", lambda: _row_states(driver).get("jetson-door") == "offline")
        assert _row_states(driver)["pi-kitchen"] == "online"
        assert "(1 of 2 online)" in _text(driver)
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # type: ignore[attr-defined]

        state = json.loads(urllib.request.urlopen(url + "api/state", timeout=5).read())
        assert {d["id"]: d["online"] for d in state["devices"]} == {"pi-kitchen": True, "jetson-door": False}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # read-only: nothing to post
        connection.request("POST", "/api/state", b"{}")
        refused = connection.getresponse()
        assert refused.status == 405 and refused.getheader("Allow") == "GET, HEAD", refused.read()
        refused.read()
        kept = connection.sock  # None had the dashboard closed it (http.client would quietly open another)
        connection.request("GET", "/api/state")  # the refused body was read and dropped: the connection goes on
        again = connection.getresponse()
        assert again.status == 200 and json.loads(again.read())["devices"], again.getheaders()
        assert kept is not None and connection.sock is kept
        connection.close()
    finally:
        for agent in agents:
            agent.stop()
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=60)
    assert serve.returncode == 0 and "Traceback" not in err, err


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def test_a_dashboard_port_already_taken_stops_serve_with_a_clear_error(tmp_path: Path, broker: Mosquitto) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = subprocess.run([sys.executable, "-m", "cloud.cli", "serve", "--broker", broker.url, "--workers", "1",
                              "--store", str(linear_cloud_store(tmp_path / "cloud")), "--registry",
                              str(tmp_path / "registry.db"), "--dashboard", str(port)],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 3, ran.stderr
    assert f"the dashboard cannot listen on 127.0.0.1:{port}" in ran.stderr and "Traceback" not in ran.stderr, ran.stderr
