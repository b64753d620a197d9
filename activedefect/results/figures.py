"""The report's figures (PNG and SVG), each saved with the data it was drawn from (JSON
beside it).

Each ``draw_*`` function takes plain data, draws one figure and returns what it drew
(points per series, axis ranges), so tests check the drawing against its inputs
(:mod:`activedefect.results.figure_data` builds those inputs from a campaign).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from activedefect.results import levels
from activedefect.results.campaign_results import to_json
from activedefect.results.defect_site import distortion_percent
from activedefect.results.figure_data import distortion_x


def _save(fig: plt.Figure, out: Path, name: str, data: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / f"{name}.svg", bbox_inches="tight")
    plt.close(fig)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=float))
    return data


def _limits(ax: plt.Axes) -> dict[str, list[float]]:
    return {"xlim": [float(v) for v in ax.get_xlim()], "ylim": [float(v) for v in ax.get_ylim()]}


# ------------------------------------------------------------------ energy vs distortion
def draw_energy_vs_distortion(data: dict[str, list[dict[str, Any]]], out: Path) -> dict[str, Any]:
    """ShakeNBreak's plot: relaxed energy vs bond distortion, one panel per charge state;
    committee mean (line) with its spread (band) over the relaxations that converged,
    open circles where the committee relaxation stopped early on the `high` head (cut as
    untrusted, out of steps), `high` labels as crosses; relaxations that stopped on
    another head have no energy on this reference and are counted in the title."""
    states = list(data)
    fig, axes = plt.subplots(1, max(1, len(states)), figsize=(4.2 * max(1, len(states)), 3.6), squeeze=False)
    drawn: dict[str, Any] = {"panels": {}}
    for ax, state in zip(axes[0], states):
        # relaxations stopped on another head (or exploded) have no energy on this reference
        points = [p for p in data[state] if p["energy_rel_eV"] is not None]
        x = distortion_x([p["seed"] for p in data[state]])
        relaxed = [p for p in points if p["status"] == "converged"]
        bonds = sorted((p for p in relaxed if distortion_percent(p["seed"]) is not None), key=lambda p: x[p["seed"]])
        bx = np.array([x[p["seed"]] for p in bonds])
        by = np.array([p["energy_rel_eV"] for p in bonds])
        bs = np.array([p["std_eV"] for p in bonds])
        if len(bonds):
            ax.plot(bx, by, "o-", color="C0", label="committee mean (relaxed)")
            ax.fill_between(bx, by - bs, by + bs, color="C0", alpha=0.2, label="committee spread (±1σ)")
        for p in (p for p in relaxed if distortion_percent(p["seed"]) is None):
            marker = "s" if p["seed"] == "Unperturbed" else "D"
            ax.errorbar([x[p["seed"]]], [p["energy_rel_eV"]], yerr=[p["std_eV"]], fmt=marker, color="C1", capsize=3)
        stopped = [p for p in points if p["status"] != "converged"]
        if stopped:
            ax.errorbar([x[p["seed"]] for p in stopped], [p["energy_rel_eV"] for p in stopped],
                        yerr=[p["std_eV"] for p in stopped], fmt="o", mfc="none", color="0.5", capsize=2,
                        label="not relaxed (stopped early)")
        for p in points:
            if distortion_percent(p["seed"]) is None:
                ax.annotate(p["seed"], (x[p["seed"]], p["energy_rel_eV"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
        labelled = [p for p in points if p["high_rel_eV"] is not None]
        if labelled:
            ax.plot([x[p["seed"]] for p in labelled], [p["high_rel_eV"] for p in labelled], "x", color="C3",
                    markersize=9, label="high label")
        off = len(data[state]) - len(points)
        ax.set_title(state + (f" ({off} stopped on the `low` head or exploded: not shown)" if off else ""),
                     fontsize=10 if off else None)
        ax.set_xlabel("bond distortion (%)")
        ax.set_ylabel("E − E(Unperturbed) (eV)")
        ax.legend(fontsize=7)
        drawn["panels"][state] = {"n_points": len(points), "n_relaxed": len(relaxed), "n_high_labels": len(labelled),
                                  "x": {p["seed"]: x[p["seed"]] for p in points}, **_limits(ax)}
    fig.tight_layout()
    return _save(fig, out, "energy_vs_distortion", {"input": data, **drawn})


# ------------------------------------------------------------------------------ parity
def draw_parity(data: dict[str, dict[str, list[float]]], out: Path) -> dict[str, Any]:
    heads = list(data)
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4), squeeze=False)
    drawn: dict[str, Any] = {"panels": {}}
    for ax, head in zip(axes[0], heads):
        d = data[head]
        everything = d["train_label_eV"] + d["held_out_label_eV"] + d["train_predicted_eV"] + d["held_out_predicted_eV"]
        ax.scatter(d["train_label_eV"], d["train_predicted_eV"], s=10, color="0.7", label=f"train ({len(d['train_label_eV'])})")
        ax.errorbar(d["held_out_label_eV"], d["held_out_predicted_eV"], yerr=d["held_out_std_eV"], fmt="o", color="C0",
                    label=f"held out ({len(d['held_out_label_eV'])})")
        if everything:
            lo, hi = min(everything), max(everything)
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
        err = np.subtract(d["held_out_predicted_eV"], d["held_out_label_eV"])
        rmse = float(np.sqrt(np.mean(err**2))) if len(err) else None
        ax.set_title(f"{head} head" + (f": held-out RMSE {rmse:.3f} eV" if rmse is not None else ""))
        ax.set_xlabel(f"{head} label (eV)")
        ax.set_ylabel("committee mean (eV)")
        ax.legend(fontsize=7)
        drawn["panels"][head] = {"n_held_out": len(d["held_out_label_eV"]), "n_train": len(d["train_label_eV"]),
                                 "held_out_rmse_eV": rmse, **_limits(ax)}
    fig.tight_layout()
    return _save(fig, out, "parity", {"input": data, **drawn})


# --------------------------------------------------------------------- learning curves
def draw_learning_curves(history: pd.DataFrame, out: Path) -> dict[str, Any]:
    """Labels spent, held-out energy RMSE per head, and the committee's force spread at
    each charge state's ground state, over generations."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    drawn: dict[str, Any] = {"series": {}}
    per_generation = history.drop_duplicates("generation").sort_values("generation") if len(history) else history
    for i, head in enumerate(("low", "high")):
        for ax, column, key in ((axes[0], f"labels_{head}", "labels"), (axes[1], f"energy_rmse_{head}_eV", "rmse")):
            if column not in per_generation:
                continue
            x, y = per_generation["generation"].tolist(), per_generation[column].astype(float).tolist()
            ax.plot(x, y, "o-", color=f"C{i}", label=head)
            drawn["series"][f"{key}_{head}"] = {"generation": x, "values": y}
    if "state" in history:
        for j, (state, group) in enumerate(sorted(history.groupby("state"))):
            group = group.sort_values("generation")
            x, y = group["generation"].tolist(), group["max_force_spread_eV_A"].astype(float).tolist()
            axes[2].plot(x, y, "o-", color=f"C{j + 2}", label=state)
            drawn["series"][f"spread_{state}"] = {"generation": x, "values": y}
    titles = ("labels trained on", "held-out energy RMSE (eV)", "force spread at ground state (eV/Å)")
    for ax, title in zip(axes, titles):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("generation")
        ax.set_title(title)
        if ax.has_data():
            ax.legend(fontsize=7)
    axes[1].set_yscale("log") if axes[1].has_data() else None
    drawn["panels"] = {title: _limits(ax) for title, ax in zip(titles, axes)}
    fig.tight_layout()
    return _save(fig, out, "learning_curves", {"input": to_json(history), **drawn})


# ---------------------------------------------------------------------------------- PCA
def draw_pca(data: dict[str, Any], out: Path) -> dict[str, Any]:
    """The committee's descriptor space coloured by charge state (paper Fig. 3a);
    ground states as stars."""
    fig, ax = plt.subplots(figsize=(5, 4.2))
    charges = np.array(data["charge"])
    pc1, pc2 = np.array(data["pc1"]), np.array(data["pc2"])
    counts = {}
    for i, q in enumerate(sorted(set(charges.tolist()), reverse=True)):
        mask = charges == q
        counts[str(q)] = int(mask.sum())
        ax.scatter(pc1[mask], pc2[mask], s=14, color=f"C{i}", alpha=0.7, label=f"q = {q:+d}" if q else "q = 0")
    ground = np.isin(np.array(data["frame"]), data["ground_state_frames"])
    ax.scatter(pc1[ground], pc2[ground], marker="*", s=180, facecolor="none", edgecolor="k", label="ground states")
    ratio = data["explained_variance_ratio"]
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f} %)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f} %)")
    ax.set_title("committee descriptors of labelled frames")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "pca", {"input": data, "points_per_charge": counts, "n_ground_states": int(ground.sum()),
                                   **_limits(ax)})


# --------------------------------------------------------- configuration coordinate
def draw_cc(data: dict[str, Any], out: Path) -> dict[str, Any]:
    fig, ax = plt.subplots(figsize=(5, 4))
    q = np.array(data["Q_amu_A"])
    minima = {}
    for i, (state, curve) in enumerate(data["curves"].items()):
        e, s = np.array(curve["energy_rel_eV"]), np.array(curve["std_eV"])
        ax.plot(q, e, "o-", color=f"C{i}", markersize=3, label=state)
        ax.fill_between(q, e - s, e + s, color=f"C{i}", alpha=0.15)
        minima[state] = float(q[int(np.argmin(e))])
    for x in (0.0, data["delta_Q_amu_A"]):
        ax.axvline(x, color="0.6", lw=0.6, ls=":")
    ax.set_xlabel("Q (amu$^{1/2}$ Å)")
    ax.set_ylabel("E + q E$_{VBM}$ (eV), committee, high head")
    ax.set_title(f"configuration coordinate: {data['state_a']} ↔ {data['state_b']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out, "configuration_coordinate", {"input": data, "n_points": len(q), "Q_of_minimum": minima,
                                                        **_limits(ax)})


# ------------------------------------------------------------------ levels diagram
def draw_levels(data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Formation energy vs Fermi level (lower envelope) where every defect has a
    reference; otherwise the transition levels in the gap."""
    defects = data["defects"]
    formation = bool(defects) and all(d["reference_eV"] is not None for d in defects.values())
    fig, ax = plt.subplots(figsize=(5, 4))
    drawn: dict[str, Any] = {"kind": "formation_energy" if formation else "transition_levels", "defects": {}}
    vbm = data["vbm_eV"]
    for i, (defect, d) in enumerate(defects.items()):
        energies = {int(q): e for q, e in d["energies_eV"].items()}
        corrections = {int(q): c for q, c in d["corrections_eV"].items()}
        lo, hi = d["fermi_window_eV"]
        stable = levels.stable_levels(defect, energies, vbm, (lo, hi), corrections)
        adjacent = levels.adjacent_levels(defect, energies, vbm, corrections)
        if formation:
            fermi = np.linspace(lo, hi, 200)
            lines = np.stack([levels.formation_energy(energies[q], q, fermi, vbm, d["reference_eV"],
                                                      corrections.get(q, 0.0)) for q in sorted(energies)])
            envelope = lines.min(axis=0)
            ax.plot(fermi, envelope, color=f"C{i}", lw=2, label=defect)
            charges = levels.stable_charges(energies, fermi, vbm, corrections)
            for q in dict.fromkeys(charges.tolist()):  # the charge on each segment, at its middle
                middle = int(np.flatnonzero(charges == q).mean())
                ax.annotate(f"{q:+d}" if q else "0", (fermi[middle], envelope[middle]), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=8, color=f"C{i}")
            for level in stable:
                y = levels.formation_energy(energies[level.charge], level.charge, level.level_eV, vbm,
                                            d["reference_eV"], corrections.get(level.charge, 0.0))
                ax.plot([level.level_eV], [y], "o", color=f"C{i}")
                ax.annotate(level.label, (level.level_eV, float(y)), textcoords="offset points", xytext=(3, 6), fontsize=7)
            drawn["defects"][defect] = {"envelope_min_eV": float(envelope.min()), "envelope_max_eV": float(envelope.max()),
                                        "kinks_eV": [lv.level_eV for lv in stable]}
        else:
            kinks = {lv.label for lv in stable}
            shown = adjacent + [lv for lv in stable if lv.label not in {a.label for a in adjacent}]
            for level in shown:
                solid = level.label in kinks
                ax.hlines(level.level_eV, i - 0.35, i + 0.35, color="C3" if solid else "0.5",
                          linestyles="-" if solid else "--")
                ax.annotate(level.label, (i + 0.37, level.level_eV), va="center", fontsize=7)
            drawn["defects"][defect] = {"levels_eV": {lv.label: lv.level_eV for lv in shown},
                                        "stable": [lv.label for lv in stable]}
    if formation:
        ax.set_xlabel("Fermi level above the VBM (eV)")
        ax.set_ylabel("formation energy (eV)")
        ax.legend(fontsize=7)
    else:
        window = [w for d in defects.values() for w in d["fermi_window_eV"]]
        found = [v for d in drawn["defects"].values() for v in d["levels_eV"].values()]
        ax.set_ylim(min(window + found) - 0.2, max(window + found) + 0.2)
        if data["band_gap_eV"] is not None:
            ax.axhspan(ax.get_ylim()[0], 0.0, color="C0", alpha=0.15)
            ax.axhspan(data["band_gap_eV"], ax.get_ylim()[1], color="C1", alpha=0.15)
        ax.set_xticks(range(len(defects)), list(defects))
        ax.set_xlim(-0.6, len(defects) - 0.1)
        ax.set_ylabel("level above the VBM (eV)")
        ax.set_title("charge transition levels (solid: crossed by E_F)")
    fig.tight_layout()
    return _save(fig, out, "levels", {"input": data, **drawn, **_limits(ax)})
