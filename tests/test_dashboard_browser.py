"""The dashboard in a real browser: `streamlit run` headless, Debian Chromium driven by Playwright.

Needs /usr/bin/chromium (Debian package ``chromium``; ``.ci/run`` installs it) and the
``playwright`` package. Without them the test is skipped on a developer's machine, naming
the install command, and fails under ``CI=true``, where a skip would pass unseen. Saves a
screenshot to ``tests/artifacts/dashboard.png`` for a human to look at.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.test_dashboard import APP
from tests.test_dashboard import runs_root as runs_root  # noqa: F401  (module fixture)

CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y chromium"  # Debian's build; never `playwright install`
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def missing_browser(chromium: str, has_playwright: bool) -> str | None:
    """What the browser test lacks, with the command that installs it; None when nothing."""
    if not Path(chromium).exists():
        return f"{chromium} is missing: install Debian's chromium (`{INSTALL}`), as .ci/run does"
    if not has_playwright:
        return "the playwright package is missing: `pip install -e '.[dev]'` (or `make install`)"
    return None


def require_browser(chromium: str, has_playwright: bool, env: Mapping[str, str]) -> None:
    """Skip the browser test locally when a piece is missing; fail under ``CI=true``."""
    problem = missing_browser(chromium, has_playwright)
    if problem is None:
        return
    if env.get("CI") == "true":
        pytest.fail(problem, pytrace=False)
    pytest.skip(problem)


@pytest.fixture(scope="module")
def browser_ready() -> None:
    # module scope and first in the test's arguments: checked before runs_root trains models
    has_playwright = importlib.util.find_spec("playwright") is not None
    require_browser(CHROMIUM, has_playwright, os.environ)


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


def test_dashboard_in_chromium(browser_ready, server):
    from playwright.sync_api import sync_playwright  # a dev extra: checked by browser_ready

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


def test_a_missing_chromium_skips_locally_and_fails_under_ci(tmp_path):
    absent = str(tmp_path / "chromium")
    with pytest.raises(pytest.skip.Exception, match=INSTALL):
        require_browser(absent, True, {})
    with pytest.raises(pytest.skip.Exception, match=INSTALL):
        require_browser(absent, True, {"CI": "false"})
    with pytest.raises(pytest.fail.Exception, match=INSTALL):
        require_browser(absent, True, {"CI": "true"})


def test_a_missing_playwright_skips_locally_and_fails_under_ci(tmp_path):
    present = tmp_path / "chromium"
    present.touch()
    with pytest.raises(pytest.skip.Exception, match="playwright"):
        require_browser(str(present), False, {})
    with pytest.raises(pytest.fail.Exception, match="playwright"):
        require_browser(str(present), False, {"CI": "true"})
    require_browser(str(present), True, {"CI": "true"})  # all there: neither skips nor fails
