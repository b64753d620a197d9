"""The campaign page in the Dask dashboard (``/activedefect``, JSON at ``/activedefect/json``).

The driver pushes the campaign's live status (``status --json`` plus history, timeline,
committee errors, landscape, progress; :meth:`Campaign.live_status`) into the scheduler's
metadata. The scheduler loads this module through ``distributed.scheduler.http.routes``
(the LocalCluster the campaign starts does; for ``dask scheduler`` see docs/index.md):
importing it adds the Bokeh page to the dashboard's applications and its menu (Bokeh
is one of our dependencies, as it is of Dask's dashboard), and ``routes`` adds the JSON.
When the scheduler was started without this module, :func:`serve_from_driver` serves the
same page and JSON from the driver process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import threading
from typing import Any, Callable

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from distributed.http.utils import RequestHandler
from tornado.web import RequestHandler as TornadoHandler

from activedefect.execution.campaign_page import campaign_document

log = logging.getLogger(__name__)

METADATA_KEY = "activedefect"
PAGE = "activedefect"


def _scheduler_status(scheduler) -> dict[str, Any] | None:  # noqa: ANN001
    return scheduler.get_metadata(keys=[METADATA_KEY], default=None)


def _dask_page(scheduler, extra: dict[str, Any], doc) -> None:  # noqa: ANN001 - dask's signature
    """The page as one of the dashboard's Bokeh applications, in its template (menu bar)."""
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    campaign_document(functools.partial(_scheduler_status, scheduler), doc)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


def _register_with_dask_dashboard() -> None:
    """Add the page to the Bokeh applications the scheduler's dashboard serves and its
    name to the dashboard's menu (Dask builds both when the scheduler starts, after it
    imported the route modules)."""
    from distributed.dashboard import scheduler as dask_dashboard

    dask_dashboard.applications[f"/{PAGE}"] = _dask_page
    dask_variables = dask_dashboard.template_variables
    if getattr(dask_variables, "adds_campaign_page", False):
        return

    def with_campaign_page(scheduler) -> dict[str, Any]:  # noqa: ANN001
        variables = dask_variables(scheduler)
        if PAGE not in variables["pages"]:
            variables["pages"].append(PAGE)
        return variables

    with_campaign_page.adds_campaign_page = True  # type: ignore[attr-defined]
    dask_dashboard.template_variables = with_campaign_page


class CampaignJSON(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(_scheduler_status(self.server)))


_register_with_dask_dashboard()

routes: list[tuple] = [(rf"{PAGE}/json", CampaignJSON, {})]


class _DriverJSON(TornadoHandler):
    def initialize(self, read_status: Callable[[], dict[str, Any] | None]) -> None:
        self.read_status = read_status

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(self.read_status()))


def serve_from_driver(read_status: Callable[[], dict[str, Any] | None], port: int = 0,
                      ) -> tuple[str | None, Callable[[], None]]:
    """Serve the page (a Bokeh server on 127.0.0.1, in a thread of this process) for
    schedulers started without this module. Returns the page address (None where the
    server could not start: the campaign runs on without a page) and a function that
    stops the server and waits for its thread."""
    from bokeh.server.server import Server

    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    started = threading.Event()
    held: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            server = Server(
                {f"/{PAGE}": Application(FunctionHandler(functools.partial(campaign_document, read_status)))},
                address="127.0.0.1", port=port, allow_websocket_origin=[f"127.0.0.1:{port}", f"localhost:{port}"],
                extra_patterns=[(rf"/{PAGE}/json", _DriverJSON, {"read_status": read_status})],
            )
            server.start()
        except Exception as error:  # noqa: BLE001 - e.g. the port was taken after the probe
            held["error"] = error
            loop.close()
            started.set()
            return
        held["loop"] = loop
        started.set()
        loop.run_forever()
        server.stop()
        loop.close()

    thread = threading.Thread(target=serve, daemon=True, name="activedefect-page")
    thread.start()
    if not started.wait(30) or "loop" not in held:
        log.warning("campaign page not served from the driver: %s", held.get("error", "no start within 30 s"))
        return None, lambda: None

    def stop() -> None:
        loop = held.pop("loop", None)
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    return f"http://127.0.0.1:{port}/{PAGE}", stop
