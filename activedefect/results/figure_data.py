"""The data each report figure is drawn from, built from a :class:`CampaignResults`
(committee predictions, labels, ground states): plain dicts that
:mod:`activedefect.results.figures` draws and saves beside each figure.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from activedefect.results.campaign_results import CampaignResults
from activedefect.results.defect_site import distortion_percent
from activedefect.seeds.defects import charged_name
from activedefect.store.zarr_store import Store

if TYPE_CHECKING:
    from activedefect.search.selection import Exploration


# ------------------------------------------------------------------ energy vs distortion
#: Gap (bond distortion, %) between ShakeNBreak's non-bond-distortion seeds, after the last one.
_EXTRA_GAP_PERCENT = 15.0


def distortion_x(seeds: list[str]) -> dict[str, float]:
    """x position of each seed on ShakeNBreak's plot: its bond distortion (%), Unperturbed
    at 0, the other seeds (Dimer, Rattled) in turn after the largest distortion."""
    numeric = {s: distortion_percent(s) for s in seeds}
    top = max([v for v in numeric.values() if v is not None], default=0.0)
    others = sorted(s for s, v in numeric.items() if v is None and s != "Unperturbed")
    positions = {s: v for s, v in numeric.items() if v is not None}
    positions.update({s: top + _EXTRA_GAP_PERCENT * (i + 1) for i, s in enumerate(others)})
    if "Unperturbed" in seeds:
        positions["Unperturbed"] = 0.0
    return positions


def distortion_data(results: CampaignResults) -> dict[str, list[dict[str, Any]]]:
    """:func:`distortion_points` of the campaign's last exploration."""
    if results.exploration is None:
        return {}
    hashes = {f: results.directory.settings_hash(f) for f in ("low", "high")}
    return distortion_points(results.exploration, results.store, hashes)


def distortion_points(exploration: Exploration, store: Store, hashes: dict[str, str],
                      head: str = "high") -> dict[str, list[dict[str, Any]]]:
    """Per charge state, each ShakeNBreak seed's committee relaxation on ``head``: energy
    relative to the relaxed Unperturbed seed (committee mean and spread; ``reference_eV``),
    the `high` label of the relaxed structure where one exists (on the same reference, so
    its offset from the point is the model's error), its `low` label (relative to the
    `low` label of the Unperturbed seed's end, else the state's lowest `low` label) and
    the x position (bond distortion, %). A relaxation that stopped while still on another
    head (``exploration.start_head``) or exploded has no energy on this reference:
    ``energy_rel_eV`` is None there and ``head`` says where it stopped."""
    out: dict[str, list[dict[str, Any]]] = {}
    for result in exploration.results:
        if "~" in result.seed:  # rattled or re-charged starts are not ShakeNBreak seeds
            continue
        frame = store.find_frame(result.atoms)
        labels = {f: None if frame is None else store.label_energy(f, frame, hashes[f]) for f in hashes}
        finite = math.isfinite(result.energy_eV) and math.isfinite(result.energy_std_eV)
        out.setdefault(charged_name(result.defect, result.charge), []).append({
            "seed": result.seed, "head": result.head or head, "status": result.status,
            "energy_eV": float(result.energy_eV) if finite else None,
            "std_eV": float(result.energy_std_eV) if finite else None,
            "high_eV": labels["high"], "low_eV": labels["low"],
        })
    for points in out.values():
        x = distortion_x([p["seed"] for p in points])
        on_head = [p for p in points if p["head"] == head and p["energy_eV"] is not None]
        unperturbed = next((p for p in on_head if p["seed"] == "Unperturbed"), None)
        ref = unperturbed["energy_eV"] if unperturbed else min((p["energy_eV"] for p in on_head), default=None)
        low_unperturbed = next((p["low_eV"] for p in points if p["seed"] == "Unperturbed"), None)
        low_ref = low_unperturbed if low_unperturbed is not None else \
            min((p["low_eV"] for p in points if p["low_eV"] is not None), default=None)
        for p in points:
            p["x_percent"] = x[p["seed"]]
            p["reference_eV"] = ref
            p["energy_rel_eV"] = p["energy_eV"] - ref if ref is not None and p in on_head else None
            p["high_rel_eV"] = p["high_eV"] - ref if ref is not None and p["high_eV"] is not None else None
            p["low_rel_eV"] = p["low_eV"] - low_ref if p["low_eV"] is not None else None
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------ parity
def parity_data(results: CampaignResults) -> dict[str, dict[str, list[float]]]:
    """Per head: the final committee's predictions against the labels it held out (and,
    for context, those it trained on), energies per structure in eV."""
    from activedefect.model.training import training_data
    from activedefect.spec import FIDELITIES
    from activedefect.store.store_labels import REF_ENERGY_KEY

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


# ---------------------------------------------------------------------------------- PCA
def pca_data(results: CampaignResults) -> dict[str, Any]:
    """Mean-pooled descriptors of the final committee (member 0) for every labelled
    frame and the ground states, projected on their first two principal components."""
    from sklearn.decomposition import PCA

    from activedefect.search.candidates import mean_pooled

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
