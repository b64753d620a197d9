"""A screenshot of the campaign page while a campaign runs (docs/images/dashboard.png).

    python benchmarks/dashboard_screenshot.py [SPEC] [--dir runs/dashboard-shot]
        [--generation 3] [--out docs/images/dashboard.png]

Starts the campaign from the CLI as a user would (default: the quickstart), opens the
page address it prints in headless Chromium once (the code the dashboard test uses,
tests/page_browser.py; needs Debian's chromium and chromium-driver), waits until the page
shows that ``--generation`` has been assessed and the next one is training, saves the
page, prints the page's numbers beside ``status --json`` and interrupts the campaign
(``activedefect campaign resume DIR`` finishes it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from page_browser import PageBrowser, wait_for  # noqa: E402

CLI = [str(Path(sys.executable).with_name("activedefect"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "campaigns" / "quickstart.yaml"))
    parser.add_argument("--dir", default="runs/dashboard-shot")
    parser.add_argument("--generation", type=int, default=3, help="screenshot once this generation is assessed")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "dashboard.png"))
    parser.add_argument("--timeout-s", type=float, default=3600)
    args = parser.parse_args()

    log = Path(args.dir).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        driver = subprocess.Popen(CLI + ["campaign", "start", args.spec, "--dir", args.dir], stdout=out,
                                  stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    browser = None
    started = time.monotonic()
    try:
        page = wait_for("the campaign page's address", _while_running(
            driver, lambda: (re.findall(r"Campaign page:\s+(http://\S+)", log.read_text()) or [None])[0]),
            args.timeout_s)
        print(f"page: {page}")
        browser = PageBrowser()
        browser.open(page)
        wait_for(f"generation {args.generation + 1} training", _while_running(
            driver, lambda: browser.texts().get("working_on") == str(args.generation + 1)
            and browser.texts().get("phase") == "train"), args.timeout_s)
        wait_for("all plots", lambda: browser.drawn_plots() >= 5)
        shot = browser.screenshot(Path(args.out))
        status = json.loads(subprocess.run(CLI + ["campaign", "status", args.dir, "--json"], capture_output=True,
                                           text=True, check=True).stdout)
        shown = browser.texts()
        print(f"saved {shot} after {time.monotonic() - started:.0f} s")
        print(f"page: generation {shown.get('generation')}, calls low {shown.get('calls-low')} high "
              f"{shown.get('calls-high')}; status --json: generation {status['generation']}, calls low "
              f"{status['oracle']['low']['calls']} high {status['oracle']['high']['calls']}")
    finally:
        if browser is not None:
            browser.close()
        if driver.poll() is None:
            driver.send_signal(signal.SIGINT)
            driver.wait(120)


def _while_running(driver: subprocess.Popen, condition):  # noqa: ANN001, ANN202
    """``condition``, failing at once when the campaign has stopped."""
    def check():  # noqa: ANN202
        if driver.poll() is not None:
            raise SystemExit(f"the campaign stopped (rc {driver.returncode}) before the screenshot")
        return condition()
    return check


if __name__ == "__main__":
    main()
