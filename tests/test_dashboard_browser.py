"""The dashboard as a user sees it: `connect()` starts the embedded Ray in a driver of its
own, headless Chromium opens the printed URL, logs in through the dashboard's own token
prompt with the token from the file the login hint names, and finds the driver's job on
the jobs page. Skipped where Chromium or Playwright is missing."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="needs Playwright (pip install '.[test]')")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What this Chromium needs in a container without a display or a network.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="no Chromium at /usr/bin/chromium (Debian: apt-get install chromium)")

DRIVER = """\
import sys
from mer_ray.distributed.cluster import connect

connect(num_cpus=1)
print("ready", flush=True)
sys.stdin.readline()  # until the test is done with the dashboard
"""


class Driver:
    """A mer-ray driver with an embedded Ray, its output collected line by line."""

    def __init__(self, script: Path, home: Path):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
        env["HOME"] = str(home)  # a fresh ~/.ray: Ray writes a new token there
        self.proc = subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout),
                         daemon=True).start()

    def wait_for(self, word: str, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while not any(word in line for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.time() < deadline, "".join(self.lines)
            time.sleep(0.5)

    def find(self, pattern: str) -> str:
        text = "".join(self.lines)
        match = re.search(pattern, text)
        assert match, text
        return match.group(1)

    def stop(self) -> None:
        try:
            self.proc.communicate("\n", timeout=120)  # ray.shutdown() as the driver exits
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def open_dashboard(context, url: str, token: str):
    """The dashboard's first page, logged in the way a person does it: its dialog asks
    for the token, and /api/authenticate answers with an HttpOnly cookie."""
    page = context.new_page()
    page.goto(url)
    dialog = page.get_by_role("dialog", name="Authentication Token Required")
    dialog.get_by_label("Authentication Token").fill(token)
    dialog.get_by_role("button", name="Submit").click()
    dialog.wait_for(state="hidden")
    return page


def test_dashboard_jobs_page_lists_the_run_after_token_login(tmp_path):
    script = tmp_path / "watch_a_run.py"
    script.write_text(DRIVER)
    driver = Driver(script, tmp_path / "home")
    try:
        driver.wait_for("ready")
        url = driver.find(r"Ray dashboard: (http://127\.0\.0\.1:\d+)")
        token_file = Path(driver.find(r"asks for the token in (\S+)"))
        assert token_file == tmp_path / "home" / ".ray" / "auth_token"
        token = token_file.read_text().strip()
        with sync_api.sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM,
                headless=True, args=FLAGS, viewport={"width": 1400, "height": 900})
            try:
                # Without the token the API refuses, with the cookie it answers.
                assert context.request.get(url + "/api/jobs/").status == 401
                page = open_dashboard(context, url, token)
                assert context.request.get(url + "/api/jobs/").ok
                page.goto(url + "/#/jobs")
                row = page.get_by_role("row").filter(has_text=script.name)
                row.first.wait_for(timeout=60_000)
                assert "RUNNING" in row.first.inner_text()
                page.screenshot(path=str(tmp_path / "dashboard-jobs.png"))
            finally:
                context.close()
    finally:
        driver.stop()
    assert driver.proc.returncode == 0, "".join(driver.lines)
