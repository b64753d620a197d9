"""`activedefect campaign report DIR`: figures (PNG and SVG), the data each was drawn
from (JSON beside it) and an index.html that opens from disk, in ``DIR/report/``.

Each ``draw_*`` function takes plain data, draws one figure and returns what it drew
(points per series, axis ranges), so tests check the drawing against its inputs; each
``*_data`` function builds those inputs from a :class:`CampaignResults`.
"""

from __future__ import annotations

import html
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
from activedefect.results.campaign_results import CampaignResults, distortion_percent, to_json
from activedefect.seeds.defects import charged_name

#: x position (bond distortion %) of ShakeNBreak's non-bond-distortion seeds, after the last one.
_EXTRA_GAP = 15.0


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
def distortion_data(results: CampaignResults) -> dict[str, list[dict[str, Any]]]:
    """Per charge state, each ShakeNBreak seed's committee relaxation of the last
    exploration: energy relative to the relaxed Unperturbed seed (committee mean and
    spread, `high` head) and the `high` label of the relaxed structure where one exists
    (on the same reference, so its offset from the band is the model's error)."""
    exploration = results.exploration
    if exploration is None:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for result in exploration.results:
        if "~" in result.seed:  # rattled or re-charged starts are not ShakeNBreak seeds
            continue
        frame = results.store.find_frame(result.atoms)
        out.setdefault(charged_name(result.defect, result.charge), []).append({
            "seed": result.seed, "energy_eV": float(result.energy_eV), "std_eV": float(result.energy_std_eV),
            "high_eV": results.high_label(frame) if frame is not None else None, "status": result.status,
        })
    for points in out.values():
        ref = next((p["energy_eV"] for p in points if p["seed"] == "Unperturbed"), min(p["energy_eV"] for p in points))
        for p in points:
            p["energy_rel_eV"] = p["energy_eV"] - ref
            p["high_rel_eV"] = None if p["high_eV"] is None else p["high_eV"] - ref
    return dict(sorted(out.items()))


def _x_positions(seeds: list[str]) -> dict[str, float]:
    numeric = {s: distortion_percent(s) for s in seeds}
    top = max([v for v in numeric.values() if v is not None], default=0.0)
    others = sorted(s for s, v in numeric.items() if v is None and s != "Unperturbed")
    positions = {s: v for s, v in numeric.items() if v is not None}
    positions.update({s: top + _EXTRA_GAP * (i + 1) for i, s in enumerate(others)})
    if "Unperturbed" in seeds:
        positions["Unperturbed"] = 0.0
    return positions


def draw_energy_vs_distortion(data: dict[str, list[dict[str, Any]]], out: Path) -> dict[str, Any]:
    """ShakeNBreak's plot: relaxed energy vs bond distortion, one panel per charge state;
    committee mean (line) with its spread (band) over the relaxations that converged,
    open circles where the committee relaxation stopped early (cut as untrusted, out of
    steps), `high` labels as crosses."""
    states = list(data)
    fig, axes = plt.subplots(1, max(1, len(states)), figsize=(4.2 * max(1, len(states)), 3.6), squeeze=False)
    drawn: dict[str, Any] = {"panels": {}}
    for ax, state in zip(axes[0], states):
        points = data[state]
        x = _x_positions([p["seed"] for p in points])
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
        ax.set_title(state)
        ax.set_xlabel("bond distortion (%)")
        ax.set_ylabel("E − E(Unperturbed) (eV)")
        ax.legend(fontsize=7)
        drawn["panels"][state] = {"n_points": len(points), "n_relaxed": len(relaxed), "n_high_labels": len(labelled),
                                  "x": {p["seed"]: x[p["seed"]] for p in points}, **_limits(ax)}
    fig.tight_layout()
    return _save(fig, out, "energy_vs_distortion", {"input": data, **drawn})


# ------------------------------------------------------------------------------ parity
def parity_data(results: CampaignResults) -> dict[str, dict[str, list[float]]]:
    """Per head: the final committee's predictions against the labels it held out (and,
    for context, those it trained on), energies per structure in eV."""
    from activedefect.model.training import training_data
    from activedefect.spec import FIDELITIES
    from activedefect.store.zarr_store import REF_ENERGY_KEY

    hashes = {f: results.directory.settings_hash(f) for f in FIDELITIES}
    train, valid = training_data(results.store, hashes, results.spec.committee.valid_fraction)
    out = {}
    for head in FIDELITIES:
        entry: dict[str, list[float]] = {}
        for split, frames in (("held_out", valid[head]), ("train", train[head])):
            predictions = results.committee.predict(frames, head)
            entry[f"{split}_label_eV"] = [float(a.info[REF_ENERGY_KEY]) for a in frames]
            entry[f"{split}_predicted_eV"] = [p.energy_mean_eV for p in predictions]
            entry[f"{split}_std_eV"] = [p.energy_std_eV for p in predictions]
            entry[f"{split}_charge"] = [int(a.info["total_charge"]) for a in frames]
        out[head] = entry
    return out


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
def pca_data(results: CampaignResults) -> dict[str, Any]:
    """Mean-pooled descriptors of the final committee (member 0) for every labelled
    frame and the ground states, projected on their first two principal components."""
    from sklearn.decomposition import PCA

    from activedefect.search.policies import mean_pooled

    labelled = sorted({int(f) for fid in ("low", "high") for f in
                       results.store.label_table(fid).query("status == 'ok'")["frame"]})
    ground = [int(f) for f in results.ground_states()["frame"]] if results.has_ground_states else []
    frames = labelled + [f for f in ground if f not in labelled]
    atoms = results.store.get_frames(frames)
    pooled = mean_pooled(results.committee.descriptors(atoms))
    pca = PCA(n_components=2).fit(pooled)
    xy = pca.transform(pooled)
    return {"frame": frames, "charge": [int(a.info["total_charge"]) for a in atoms],
            "pc1": xy[:, 0].tolist(), "pc2": xy[:, 1].tolist(), "ground_state_frames": ground,
            "explained_variance_ratio": pca.explained_variance_ratio_.tolist()}


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
def cc_data(results: CampaignResults, state_a: str, state_b: str, n_points: int = 17,
            extend: float = 0.25) -> dict[str, Any]:
    """Energies on the `high` head along the straight path between two charge states'
    ground states, in both charges: Q in amu^1/2 Å (0 at ``state_a``'s ground state),
    E(q) + E_corr(q) + q E_VBM (the formation energy at E_F = VBM, up to a constant),
    relative to the lower minimum."""
    gs = results.ground_states().set_index("state")
    a, b = (results.store.get_frame(int(gs.loc[s, "frame"])) for s in (state_a, state_b))
    from activedefect.geometry import minimum_image_displacements

    delta = minimum_image_displacements(a, b)
    delta_q = float(np.sqrt((a.get_masses()[:, None] * delta**2).sum()))
    fractions = np.linspace(-extend, 1 + extend, n_points)
    vbm = results.band_edges["vbm_eV"]
    curves = {}
    for state in (state_a, state_b):
        charge = int(gs.loc[state, "charge"])
        correction = results.corrections(str(gs.loc[state, "defect"])).get(charge, 0.0)
        path = []
        for f in fractions:
            image = a.copy()
            image.positions = a.positions + f * delta
            image.info.update({"total_charge": charge, "total_spin": int(b.info["total_spin"] if state == state_b
                                                                          else a.info["total_spin"])})
            path.append(image)
        predictions = results.committee.predict(path, "high")
        curves[state] = {"charge": charge,
                         "energy_eV": [p.energy_mean_eV + correction + charge * vbm for p in predictions],
                         "std_eV": [p.energy_std_eV for p in predictions]}
    floor = min(min(c["energy_eV"]) for c in curves.values())
    for c in curves.values():
        c["energy_rel_eV"] = [e - floor for e in c["energy_eV"]]
    return {"state_a": state_a, "state_b": state_b, "delta_Q_amu_A": delta_q,
            "Q_amu_A": (fractions * delta_q).tolist(), "curves": curves}


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
def levels_data(results: CampaignResults) -> dict[str, Any]:
    """Per defect: level energies, corrections, the Fermi window, and the reference
    E_bulk + sum n_i mu_i when chemical potentials are given (else None)."""
    gs = results.ground_states()
    out: dict[str, Any] = {"vbm_eV": results.band_edges["vbm_eV"], "band_gap_eV": results.band_edges["band_gap_eV"],
                           "vbm_source": results.band_edges["vbm_source"], "defects": {}}
    for defect, group in gs.groupby("defect", sort=True):
        out["defects"][defect] = {
            "energies_eV": {str(int(q)): float(e) for q, e in zip(group["charge"], group["level_energy_eV"])},
            "corrections_eV": {str(q): c for q, c in results.corrections(defect).items()},
            "fermi_window_eV": list(results.fermi_window(defect)),
            "reference_eV": results.formation_reference_eV(defect),
        }
    return out


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


# ------------------------------------------------------------------------ the report
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
