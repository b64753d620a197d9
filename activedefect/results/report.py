"""`activedefect campaign report DIR`: figures (PNG and SVG), the data each was drawn
from (JSON beside it) and an index.html that opens from disk, in ``DIR/report/``.

The figures are drawn by :mod:`activedefect.results.figures` from the data that
:mod:`activedefect.results.figure_data` builds; this module writes them, the tables and
the page that shows them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from activedefect.results.campaign_results import CampaignResults, to_json
from activedefect.results.figure_data import (
    cc_data,
    distortion_data,
    levels_data,
    parity_data,
    pca_data,
)
from activedefect.results.figures import (
    draw_cc,
    draw_energy_vs_distortion,
    draw_learning_curves,
    draw_levels,
    draw_parity,
    draw_pca,
)


def cc_pair(ground_states: pd.DataFrame) -> tuple[str, str] | None:
    """The two highest charge states of the first defect with two or more (e.g. 0 and -1)."""
    for _, group in ground_states.groupby("defect", sort=True):
        ordered = group.sort_values("charge", ascending=False)["state"].tolist()
        if len(ordered) >= 2:
            return ordered[0], ordered[1]
    return None


def write_report(results: CampaignResults, out: Path | None = None) -> Path:
    """Every figure, its data, the tables and ``index.html``; returns the HTML path."""
    out = Path(out) if out is not None else results.ws.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    gs = results.ground_states()
    minima = results.minima()
    table_levels = results.transition_levels()
    history = results.history()
    figures: list[tuple[str, str, str]] = []

    def add(name: str, title: str, caption: str) -> None:
        figures.append((name, title, caption))

    draw_energy_vs_distortion(distortion_data(results), out)
    add("energy_vs_distortion", "Energy vs bond distortion",
        "Committee relaxation of each ShakeNBreak seed in the last exploration, relative to the "
        "Unperturbed seed's: mean (line) and spread (band) on the high head where the relaxation converged, "
        "open circles where it stopped early (the structure there, not a minimum); crosses: high labels of "
        "those final structures, on the same reference.")
    draw_parity(parity_data(results), out)
    add("parity", "Parity per head", "Final committee vs the labels it held out (blue, with spread) and trained on (grey).")
    draw_learning_curves(history, out)
    add("learning_curves", "Learning curves", "Per generation: labels trained on, held-out RMSE, force spread at each ground state.")
    draw_pca(pca_data(results), out)
    add("pca", "Descriptor PCA", "Mean-pooled descriptors of the final committee's member 0 for every labelled frame.")
    pair = cc_pair(gs)
    if pair is not None:
        draw_cc(cc_data(results, *pair), out)
        add("configuration_coordinate", "Configuration coordinate diagram",
            f"Straight path between the ground states of {pair[0]} and {pair[1]}, both charges on the high head.")
        draw_levels(levels_data(results), out)
        add("levels", "Transition levels", f"VBM: {results.band_edges['vbm_source']}.")
    tables = {"ground_states": gs, "minima": minima, "transition_levels": table_levels, "history": history}
    for name, table in tables.items():
        (out / f"{name}.json").write_text(json.dumps(to_json(table), indent=1))
    page = out / "index.html"
    page.write_text(_html(results, figures, gs, table_levels, minima))
    return page


def _table(frame: pd.DataFrame, columns: list[str]) -> str:
    if frame.empty:
        return "<p>none yet</p>"
    shown = frame[[c for c in columns if c in frame]].copy()
    for column in shown:
        if shown[column].dtype.kind == "f":
            shown[column] = shown[column].map(lambda v: "—" if pd.isna(v) else f"{v:.4f}")
        elif shown[column].dtype == object:
            shown[column] = shown[column].map(
                lambda v: ", ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else v)
    return f'<div class="wide">{shown.to_html(index=False, escape=True, border=0)}</div>'


def _html(results: CampaignResults, figures, gs: pd.DataFrame, table_levels: pd.DataFrame,
          minima: pd.DataFrame) -> str:
    status = results.directory.status()
    blocks = "\n".join(
        f'<h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>'
        f'<a href="{name}.svg"><img src="{name}.png" alt="{html.escape(title)}"></a>'
        f'<p class="small">data: <a href="{name}.json">{name}.json</a></p>'
        for name, title, caption in figures
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(status['name'])}: activedefect report</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:1em auto}}img{{max-width:100%}}
table{{border-collapse:collapse;font-size:12px}}.wide{{overflow-x:auto}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}
.small{{font-size:11px;color:#666}}</style></head><body>
<h1>{html.escape(status['name'])}</h1>
<p>generation {status['generation']}, stop reason {html.escape(str(status['stop_reason']))};
oracle calls: low {status['oracle']['low']['calls']}, high {status['oracle']['high']['calls']}</p>
<h2>Ground states</h2>
{_table(gs, ["state", "converged", "distortion", "predicted_energy_eV", "energy_std_eV", "max_force_spread_eV_A",
             "high_energy_eV", "confirmed_energy_eV", "level_energy_eV", "level_energy_source", "neighbour_elements",
             "neighbour_distances_A", "n_minima"])}
<p class="small">structures: ground_states/&lt;state&gt;.extxyz and .vasp in the campaign directory; all tables as JSON here.</p>
<h2>Transition levels (eV above the VBM)</h2>
{_table(table_levels, ["defect", "label", "level_eV", "adjacent", "stable", "energy_sources", "vbm_eV", "vbm_source"])}
<h2>Minima (last exploration)</h2>
{_table(minima, ["state", "rank", "frame", "relative_energy_eV", "energy_std_eV", "high_energy_eV", "distortions",
                 "neighbour_distances_A"])}
{blocks}
</body></html>
"""
