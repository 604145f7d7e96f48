"""The dashboard in a real browser: `streamlit run` headless, Debian Chromium driven by Playwright.

Needs /usr/bin/chromium (Debian package ``chromium``; ``.ci/run`` installs it). Saves a
screenshot to ``tests/artifacts/dashboard.png`` for a human to look at.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_dashboard import APP
from tests.test_dashboard import runs_root as runs_root  # noqa: F401  (module fixture)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(runs_root):  # noqa: F811
    port = _free_port()
    env = os.environ | {"IRL_LENS_RUNS": str(runs_root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "streamlit", "run", APP, "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port),
           "--browser.gatherUsageStats", "false"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError("streamlit did not start within 60 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_dashboard_in_chromium(server):
    assert Path(CHROMIUM).exists(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium), "
        "as .ci/run does"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],  # fmt: skip
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server, timeout=60_000)
        page.get_by_text("Runs", exact=True).first.wait_for(timeout=60_000)
        page.get_by_text("Probes", exact=True).first.click()  # a widget: the page radio
        page.locator(".js-plotly-plot").first.wait_for(timeout=90_000)
        n_plots = page.locator(".js-plotly-plot").count()
        assert n_plots >= 2
        assert page.locator(".js-plotly-plot .trace").count() > 0  # traces were drawn
        page.wait_for_timeout(1000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
