"""The campaign page in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium): open it once, wait until its plots are drawn,
read the numbers it shows (Bokeh renders into shadow roots, so lookups walk them) and take
screenshots. Used by the dashboard test and by ``benchmarks/dashboard_screenshot.py``."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

#: Collects the elements matching a selector in the document and every shadow root below it.
_DEEP_QUERY = """
const deep = (root, selector, out) => {
  root.querySelectorAll(selector).forEach(e => out.push(e));
  root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) deep(e.shadowRoot, selector, out); });
  return out;
};
"""


def wait_for(what: str, condition, timeout: float = 60.0):  # noqa: ANN001, ANN201
    """Poll ``condition`` every 0.25 s until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(0.25)


def chromium_available() -> bool:
    return shutil.which("chromium") is not None and shutil.which("chromedriver") is not None


class PageBrowser:
    """One headless Chromium window on the campaign page (never reloaded after :meth:`open`)."""

    def __init__(self, width: int = 1500, height: int = 1400):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         f"--window-size={width},{height}"):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)

    def open(self, url: str) -> None:
        self.driver.get(url)

    def close(self) -> None:
        self.driver.quit()

    def texts(self) -> dict[str, str]:
        """Text of every element with an id, shadow roots included (the page's numbers)."""
        return self.driver.execute_script(
            _DEEP_QUERY + "const out = {}; deep(document, '[id]', []).forEach(e => { out[e.id] = e.textContent; });"
            " return out;")

    def drawn_plots(self) -> int:
        """Bokeh figures holding a canvas with a non-zero size: the plots that rendered."""
        return self.driver.execute_script(_DEEP_QUERY + """
            const figures = new Set();
            for (const canvas of deep(document, 'canvas', []).filter(c => c.width > 0 && c.height > 0)) {
              for (let host = canvas.getRootNode().host; host; host = host.getRootNode().host) {
                if (host.classList.contains('bk-Figure')) { figures.add(host); break; }
              }
            }
            return figures.size;""")

    def source_length(self, name: str) -> int | None:
        """Rows of the browser's copy of a named Bokeh data source (what the plot draws)."""
        return self.driver.execute_script(
            "const docs = (window.Bokeh && Bokeh.documents) || [];"
            "for (const d of docs) { const m = d.get_model_by_name(arguments[0]);"
            " if (m) { const c = Object.values(m.data)[0]; return c ? c.length : 0; } } return null;", name)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (the window is resized to the page's height first)."""
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(self.driver.get_window_size()["width"], max(800, int(height) + 40))
        time.sleep(1.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path
