"""The campaign page: a Bokeh document drawn from what the driver pushed
(:meth:`~activedefect.campaign.loop.Campaign.live_status`). Each open page checks every
half second whether a new push arrived (one dict lookup) and only then updates its data
sources, which Bokeh sends to the browser over its websocket: no reload, and nothing
computed for the page on the campaign's side.

Shown per charge state where it applies: the energy-vs-distortion landscape of the current
generation, oracle calls and seconds over wall time against the budgets, the committee's
held-out error, spread and their ratio per generation, the ground-state table, the phase
at work with its progress, and failures.
"""

from __future__ import annotations

import html
import math
from typing import Any, Callable

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import BoxAnnotation, ColumnDataSource, Div, Span
from bokeh.plotting import figure

REFRESH_MS = 500
FIDELITY_COLOURS = {"low": "#3b7dd8", "high": "#d8453b"}
#: Each Div renders in its own shadow root, so each carries the table style.
_STYLE = ("<style>table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
          "text-align:right}th{background:#eee}.bar{background:#ddd;width:240px;height:12px;display:inline-block}"
          ".fill{background:#3b7dd8;height:12px}</style>")


def campaign_document(read_status: Callable[[], dict[str, Any] | None], doc: Document) -> None:
    """Fill ``doc`` with the campaign page; ``read_status`` returns the last push (or None)."""
    page = CampaignPage(read_status)
    page.update()
    doc.title = "activedefect campaign"
    doc.add_root(page.root)
    doc.add_periodic_callback(page.update, REFRESH_MS)


class CampaignPage:
    """The page's Bokeh models; :meth:`update` redraws them when a push with a new
    ``revision`` (or progress) arrived."""

    def __init__(self, read_status: Callable[[], dict[str, Any] | None]):
        self.read_status = read_status
        self._seen: tuple | None = None
        self.header = Div(name="header", sizing_mode="stretch_width")
        self.landscapes = row(name="landscapes")
        self._landscape_states: list[str] = []
        self._landscape_sources: dict[str, dict[str, ColumnDataSource]] = {}
        self._landscape_figures: dict[str, Any] = {}
        self.timeline = ColumnDataSource(name="timeline", data=_timeline_columns([]))
        self.committee = ColumnDataSource(name="committee", data=_committee_columns([]))
        self.budget_lines = {f: Span(dimension="width", location=0, line_dash="dashed", line_color=c)
                             for f, c in FIDELITY_COLOURS.items()}
        # `high` calls include the confirm step's: its allowance on top, dotted
        self.budget_lines["confirm"] = Span(dimension="width", location=0, line_dash="dotted",
                                            line_color=FIDELITY_COLOURS["high"])
        self.ground_states = Div(name="ground-states", sizing_mode="stretch_width")
        self.failures = Div(name="failures", sizing_mode="stretch_width")
        self.root = column(
            self.header,
            Div(text="<h3>Energy vs distortion (current generation; committee on the <code>high</code> head)</h3>"),
            self.landscapes,
            Div(text="<h3>Oracle calls and the committee</h3>"),
            row(self._calls_figure(), self._seconds_figure(), self._error_figure(), self._ratio_figure()),
            self.ground_states,
            self.failures,
            sizing_mode="stretch_width",
        )

    # --- figures whose data sources persist -------------------------------------------
    def _calls_figure(self):  # noqa: ANN202 - a bokeh figure
        fig = figure(title="oracle calls (dashed: budget; dotted: + confirm)", width=330, height=260,
                     x_axis_label="wall time (min)", y_axis_label="calls", name="calls-figure")
        _fidelity_lines(fig, self.timeline, "wall_min", "{f}_calls")
        for line in self.budget_lines.values():
            fig.add_layout(line)
        fig.legend.location = "top_left"
        return fig

    def _seconds_figure(self):  # noqa: ANN202
        fig = figure(title="oracle seconds (summed over workers)", width=330, height=260,
                     x_axis_label="wall time (min)", y_axis_label="oracle time (min)", name="seconds-figure")
        _fidelity_lines(fig, self.timeline, "wall_min", "{f}_oracle_min")
        fig.legend.location = "top_left"
        return fig

    def _error_figure(self):  # noqa: ANN202
        fig = figure(title="committee on held-out labels", width=330, height=260, x_axis_label="generation",
                     y_axis_label="mean |ΔF| per atom (eV/Å)", name="error-figure")
        _fidelity_lines(fig, self.committee, "generation", "{f}_force_error_eV_A", "{f} error")
        for head, colour in FIDELITY_COLOURS.items():
            fig.line("generation", f"{head}_force_spread_eV_A", source=self.committee, color=colour,
                     line_dash="dashed", legend_label=f"{head} spread")
        fig.legend.location = "top_right"
        return fig

    def _ratio_figure(self):  # noqa: ANN202
        fig = figure(title="calibration: force error / spread", width=330, height=260, x_axis_label="generation",
                     y_axis_label="error / spread", name="ratio-figure")
        fig.add_layout(BoxAnnotation(bottom=0.5, top=2.0, fill_alpha=0.1, fill_color="green"))
        _fidelity_lines(fig, self.committee, "generation", "{f}_error_to_spread")
        fig.legend.location = "top_right"
        return fig

    def _landscape_figure(self, state: str):  # noqa: ANN202
        sources = {part: ColumnDataSource(name=f"landscape-{state}-{part}", data=_landscape_columns([], part))
                   for part in ("relaxed", "stopped", "high", "low", "ground")}
        fig = figure(title=state, width=360, height=300, x_axis_label="bond distortion (%)",
                     y_axis_label="E − E(Unperturbed) (eV)", name=f"landscape-{state}",
                     tooltips=[("seed", "@seed"), ("E", "@y{0.000} eV"), ("spread", "@std{0.000} eV")])
        fig.segment("x", "lower", "x", "upper", source=sources["relaxed"], color="#3b7dd8", line_width=2)
        fig.scatter("x", "y", source=sources["relaxed"], color="#3b7dd8", size=7, legend_label="committee (relaxed)")
        fig.scatter("x", "y", source=sources["stopped"], fill_color=None, line_color="grey", size=7,
                    legend_label="committee (stopped early)")
        fig.scatter("x", "y", source=sources["high"], marker="x", color="#d8453b", size=11, line_width=2,
                    legend_label="high label")
        fig.scatter("x", "y", source=sources["low"], marker="cross", color="#888888", size=9,
                    legend_label="low label (own reference)")
        fig.scatter("x", "y", source=sources["ground"], marker="star", color="gold", line_color="black", size=16,
                    legend_label="ground state")
        fig.legend.label_text_font_size = "7pt"
        fig.legend.background_fill_alpha = 0.4
        fig.legend.location = "top_center"
        fig.legend.click_policy = "hide"
        self._landscape_sources[state] = sources
        self._landscape_figures[state] = fig
        return fig

    # --- updates -------------------------------------------------------------------------
    def update(self) -> None:
        status = self.read_status()
        progress = (status or {}).get("progress") or {}
        seen = ((status or {}).get("revision"), progress.get("phase"), progress.get("done"))
        if seen == self._seen:
            return
        self._seen = seen
        if not status:
            self.header.text = "<h2>activedefect</h2><p>No campaign has reported yet.</p>"
            return
        self.header.text = _header_html(status)
        self.timeline.data = _timeline_columns(status.get("timeline", []))
        self.committee.data = _committee_columns(status.get("committee", []))
        budget = status["budget"]
        for fidelity in FIDELITY_COLOURS:
            self.budget_lines[fidelity].location = budget[fidelity]
        self.budget_lines["confirm"].location = budget["high"] + budget.get("confirm_high", 0)
        self._update_landscapes(status)
        self.ground_states.text = _ground_state_html(status)
        self.failures.text = _failures_html(status.get("failures", []))

    def _update_landscapes(self, status: dict[str, Any]) -> None:
        landscape = status.get("landscape") or {}
        states = sorted(landscape)
        if states != self._landscape_states:
            self._landscape_sources, self._landscape_figures = {}, {}
            self.landscapes.children = [self._landscape_figure(state) for state in states]
            self._landscape_states = states
        ground = {g["state"]: g for g in status["ground_states"]}
        for state, points in landscape.items():
            for part, source in self._landscape_sources[state].items():
                source.data = _landscape_columns(points, part, ground.get(state))
            off = sum(p["energy_rel_eV"] is None for p in points)
            self._landscape_figures[state].title.text = state + (
                f" ({off} stopped on the low head or exploded: not shown)" if off else "")


def _fidelity_lines(fig, source: ColumnDataSource, x: str, column: str, label: str = "{f}") -> None:  # noqa: ANN001
    """A line with markers per fidelity; ``column`` and ``label`` name it with ``{f}``."""
    for fidelity, colour in FIDELITY_COLOURS.items():
        fig.line(x, column.format(f=fidelity), source=source, color=colour, legend_label=label.format(f=fidelity),
                 line_width=2)
        fig.scatter(x, column.format(f=fidelity), source=source, color=colour, size=5)


# --- status -> columns and HTML (plain functions: the tests read them too) -------------------
def _timeline_columns(samples: list[dict[str, Any]]) -> dict[str, list[float]]:
    data: dict[str, list[float]] = {"wall_min": [s["wall_s"] / 60 for s in samples]}
    for fidelity in FIDELITY_COLOURS:
        data[f"{fidelity}_calls"] = [s[f"{fidelity}_calls"] for s in samples]
        data[f"{fidelity}_oracle_min"] = [s[f"{fidelity}_oracle_s"] / 60 for s in samples]
    return data


def _committee_columns(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    keys = ["generation"] + [f"{h}_{k}" for h in FIDELITY_COLOURS
                             for k in ("force_error_eV_A", "force_spread_eV_A", "error_to_spread")]
    return {k: [math.nan if r.get(k) is None else r[k] for r in rows] for k in keys}


def _landscape_columns(points: list[dict[str, Any]], part: str, ground: dict[str, Any] | None = None) -> dict:
    """One plotted layer of a charge state's landscape (x in % distortion, y in eV)."""
    if part == "ground":
        return _ground_marker(points, ground)
    if part in ("relaxed", "stopped"):  # on the landscape's head and reference only
        chosen = [p for p in points if p["energy_rel_eV"] is not None
                  and (p["status"] == "converged") == (part == "relaxed")]
        y = [p["energy_rel_eV"] for p in chosen]
        std = [p["std_eV"] for p in chosen]
    else:
        chosen = [p for p in points if p.get(f"{part}_rel_eV") is not None]
        y = [p[f"{part}_rel_eV"] for p in chosen]
        std = [0.0] * len(chosen)
    return {"x": [p["x_percent"] for p in chosen], "y": y, "std": std, "seed": [p["seed"] for p in chosen],
            "lower": [a - b for a, b in zip(y, std)], "upper": [a + b for a, b in zip(y, std)]}


def _ground_marker(points: list[dict[str, Any]], ground: dict[str, Any] | None) -> dict:
    """The reported ground state on the landscape: at its seed's x, its `high` energy when
    it has one (else the committee's prediction), on the landscape's reference."""
    empty = {"x": [], "y": [], "std": [], "seed": [], "lower": [], "upper": []}
    if not points or not ground or not ground.get("seed"):
        return empty
    seed = ground["seed"].split("~")[0]
    anchor = next((p for p in points if p["seed"] == seed), None)
    energy = ground.get("high_energy_eV") if ground.get("high_energy_eV") is not None else ground.get("predicted_energy_eV")
    if anchor is None or energy is None or anchor["reference_eV"] is None:
        return empty
    y = energy - anchor["reference_eV"]
    return {"x": [anchor["x_percent"]], "y": [y], "std": [0.0], "seed": [ground["seed"]], "lower": [y], "upper": [y]}


def _span(name: str, value: Any) -> str:
    return f"<span id='{name}'>{html.escape(str(value))}</span>"


def _header_html(status: dict[str, Any]) -> str:
    working = "" if status.get("working_on") is None else f" · working on generation {_span('working_on', status['working_on'])}"
    parts = [_STYLE, f"<h2>Campaign {html.escape(str(status['name']))}</h2>",
             f"<p>generation done {_span('generation', status['generation'])}{working} · phase "
             f"{_span('phase', status.get('phase'))} · converged {_span('converged', status['converged'])} · "
             f"stop reason {_span('stop_reason', status['stop_reason'])}</p>"]
    progress = status.get("progress")
    if progress and progress.get("total"):
        share = min(1.0, progress["done"] / progress["total"])
        parts.append(f"<p>{html.escape(progress['phase'])}: {_span('progress-done', progress['done'])} of "
                     f"{_span('progress-total', progress['total'])} <span class='bar'><div class='fill' "
                     f"style='width:{100 * share:.0f}%'></div></span></p>")
    rows = ["<table><tr><th>fidelity</th><th>calls</th><th>failures</th><th>budget</th><th>oracle s</th></tr>"]
    for fidelity, oracle in status["oracle"].items():
        rows.append(f"<tr><td>{fidelity}</td><td>{_span(f'calls-{fidelity}', oracle['calls'])}</td>"
                    f"<td>{oracle['failures']}</td><td>{status['budget'][fidelity]}</td>"
                    f"<td>{oracle['seconds']:.1f}</td></tr>")
    rows.append("</table>")
    parts.append("".join(rows))
    left = status.get("time_left") or {}
    estimate = "—" if left.get("seconds") is None else f"{left['seconds'] / 60:.1f} min"
    parts.append(f"<p>confirm step: {_span('calls-confirm', status.get('confirm_calls', 0))} of "
                 f"{status['budget'].get('confirm_high', 0)} <code>high</code> calls (counted in high above) · "
                 f"wall time {status.get('wall_s', 0) / 60:.1f} min · time left (estimate, until "
                 f"{html.escape(str(left.get('limited_by')))}; confirm not included): {_span('time-left', estimate)}</p>")
    return "".join(parts)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ground_state_html(status: dict[str, Any]) -> str:
    rows = [_STYLE, "<h3>Ground states</h3><table id='ground-states-table'><tr><th>state</th><th>structure (seed)</th><th>high E (eV)</th>"
            "<th>predicted E (eV)</th><th>max |F| high (eV/Å)</th><th>max force spread (eV/Å)</th>"
            "<th>converged</th><th>why not</th></tr>"]
    for g in status["ground_states"]:
        name = g["state"]
        why = "" if g["converged"] else "; ".join(g.get("not_converged_because") or [])
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(g.get('seed') or '—'))}</td>"
            f"<td>{_span(f'gs-{name}-high', _fmt(g['high_energy_eV']))}</td>"
            f"<td>{_span(f'gs-{name}-predicted', _fmt(g['predicted_energy_eV']))}</td>"
            f"<td>{_fmt(g.get('high_max_force_eV_A'), 3)}</td><td>{_fmt(g.get('max_force_spread_eV_A'), 3)}</td>"
            f"<td>{_span(f'gs-{name}-converged', g['converged'])}</td><td style='text-align:left'>"
            f"{html.escape(why)}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _failures_html(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return "<h3>Failures</h3><p id='failures'>none</p>"
    rows = [_STYLE, "<h3>Failures (newest)</h3><table id='failures'><tr><th>fidelity</th><th>frame</th>"
            "<th>status</th><th>reason</th></tr>"]
    for f in failures:
        rows.append(f"<tr><td>{html.escape(f['fidelity'])}</td><td>{f['frame'] if f['frame'] is not None else '—'}</td>"
                    f"<td>{html.escape(f['status'])}</td><td style='text-align:left'>{html.escape(str(f['reason']))}</td></tr>")
    rows.append("</table>")
    return "".join(rows)
