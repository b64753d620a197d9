"""The campaign page of the Dask dashboard (``/activedefect``, JSON at ``/activedefect/json``).

The driver publishes the campaign status (the same object as ``campaign status --json``,
plus a per-generation history) into the scheduler's metadata after every step; this
module, loaded by the scheduler through ``distributed.scheduler.http.routes``, renders it.
When the scheduler was started without this module, :func:`serve_from_driver` serves the
same page from the driver process.
"""

from __future__ import annotations

import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from distributed.http.utils import RequestHandler

from activedefect.geometry import format_charge

METADATA_KEY = "activedefect"


def render_page(status: dict[str, Any] | None) -> str:
    """HTML for a status object; refreshes itself every 5 s and needs no server state."""
    head = (
        "<!doctype html><html><head><meta charset='utf-8'><meta http-equiv='refresh' content='5'>"
        "<title>activedefect campaign</title><style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#eee}.bar{background:#ddd;width:300px;height:14px;display:inline-block}"
        ".fill{background:#3b7dd8;height:14px}</style></head><body>"
    )
    if not status:
        return head + "<h1>activedefect</h1><p>No campaign has reported yet.</p></body></html>"
    parts = [head, f"<h1>Campaign {html.escape(str(status['name']))}</h1>"]
    working = "" if status.get("working_on") is None else \
        f" · working on generation <b id='working_on'>{status['working_on']}</b>"
    parts.append(
        f"<p>generation done <b id='generation'>{status['generation']}</b>{working} · phase "
        f"<b id='phase'>{html.escape(str(status.get('phase')))}</b> · converged "
        f"<b id='converged'>{status['converged']}</b> · stop reason "
        f"<b id='stop_reason'>{html.escape(str(status['stop_reason']))}</b></p>"
    )
    parts.append("<h2>Labels against the budget</h2><table><tr><th>fidelity</th><th>calls</th>"
                 "<th>failures</th><th>budget</th><th>oracle s</th><th></th></tr>")
    for fidelity, oracle in status["oracle"].items():
        budget = status.get("budget", {}).get(fidelity) or 0
        used = min(1.0, oracle["calls"] / budget) if budget else 0.0
        parts.append(
            f"<tr><td>{fidelity}</td><td id='calls-{fidelity}'>{oracle['calls']}</td>"
            f"<td>{oracle['failures']}</td><td>{budget}</td><td>{oracle['seconds']:.1f}</td>"
            f"<td><span class='bar'><div class='fill' style='width:{100 * used:.0f}%'></div></span></td></tr>"
        )
    parts.append(f"</table><p>confirm step: <b id='calls-confirm'>{status.get('confirm_calls', 0)}</b> of "
                 f"{status.get('budget', {}).get('confirm_high', 0)} `high` calls (counted in high above)</p>")
    parts.append("<h2>Ground states</h2><table><tr><th>defect</th><th>charge</th>"
                 "<th>predicted E (eV)</th><th>high E (eV)</th><th>max force spread (eV/Å)</th>"
                 "<th>converged</th></tr>")
    for gs in status["ground_states"]:
        parts.append(
            f"<tr><td>{html.escape(gs['defect'])}</td><td>{format_charge(gs['charge'])}</td>"
            f"<td>{_fmt(gs['predicted_energy_eV'])}</td><td>{_fmt(gs['high_energy_eV'])}</td>"
            f"<td>{_fmt(gs.get('max_force_spread_eV_A'))}</td><td>{gs['converged']}</td></tr>"
        )
    parts.append("</table>")
    history = status.get("history") or []
    if history:
        parts.append("<h2>Over generations</h2><table><tr><th>generation</th><th>state</th>"
                     "<th>predicted E (eV)</th><th>spread (eV/Å)</th><th>RMSD to previous (Å)</th>"
                     "<th>converged</th></tr>")
        for row in history:
            parts.append(
                f"<tr><td>{row['generation']}</td><td>{html.escape(row['state'])}</td>"
                f"<td>{_fmt(row.get('predicted_energy_eV'))}</td><td>{_fmt(row.get('max_force_spread_eV_A'))}</td>"
                f"<td>{_fmt(row.get('rmsd_to_previous_A'))}</td><td>{row.get('converged')}</td></tr>"
            )
        parts.append("</table>")
    parts.append(f"<script id='status' type='application/json'>{html.escape(json.dumps(status))}</script>")
    return "".join(parts) + "</body></html>"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _scheduler_status(scheduler) -> dict[str, Any] | None:  # noqa: ANN001
    return scheduler.get_metadata(keys=[METADATA_KEY], default=None)


class CampaignPage(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(render_page(_scheduler_status(self.server)))


class CampaignJSON(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(_scheduler_status(self.server)))


routes: list[tuple] = [
    (r"activedefect", CampaignPage, {}),
    (r"activedefect/json", CampaignJSON, {}),
]


def serve_from_driver(get_status: Callable[[], dict[str, Any] | None], port: int = 0) -> tuple[str, Callable[[], None]]:
    """Serve the page from this process (for schedulers started without our module).
    Returns the page address and a function that stops the server."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status = get_status()
            if self.path.rstrip("/").endswith("/json"):
                body, kind = json.dumps(status).encode(), "application/json"
            else:
                body, kind = render_page(status).encode(), "text/html; charset=utf-8"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/activedefect", server.shutdown
