"""What `campaign export` hands on beyond the labels: the ShakeNBreak folder layout of
every charge state, the metastable minima as structure files, and the committee as MACE
model files with the arguments ``mace.calculators.MACECalculator`` needs.

ShakeNBreak layout (what ``Distortions.write_vasp_files`` and ``snb-groundstate`` write,
ShakeNBreak 3.4)::

    shakenbreak/distortion_metadata.json             distortion parameters, sites, distorted atoms
    shakenbreak/v_Si_0/distortion_metadata.json      the same for this charge state
    shakenbreak/v_Si_0/Bond_Distortion_-30.0%/POSCAR the seed (start) structure
    shakenbreak/v_Si_0/Bond_Distortion_-30.0%/CONTCAR its committee relaxation (`high` head)
    shakenbreak/v_Si_0/groundstate_POSCAR            the campaign's ground state
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ase import Atoms
from ase.io import write

from activedefect.geometry import CHARGE_KEY, SPIN_KEY
from activedefect.results.campaign_results import CampaignResults
from activedefect.seeds.defects import charged_name, split_charged_name
from activedefect.seeds.distortion_options import validate_distortion_options

#: ``MACECalculator`` reads charge and multiplicity from ``atoms.info["charge"]`` /
#: ``["spin"]`` unless told otherwise; our models were trained on these keys.
INFO_KEYS = {CHARGE_KEY: CHARGE_KEY, SPIN_KEY: SPIN_KEY}


def write_poscar(atoms: Atoms, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, atoms, format="vasp", direct=True, sort=False)


def shakenbreak_metadata(results: CampaignResults) -> dict[str, Any]:
    """``distortion_metadata.json`` content in ShakeNBreak's schema, with an extra
    ``activedefect`` block per charge state (ground-state distortion and energies)."""
    options = validate_distortion_options(dict(results.spec.distortions))
    gs = results.ground_states().set_index("state") if results.has_ground_states else None
    defects: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    for name, meta in results.seed_metadata.items():
        defect, charge = split_charged_name(name)
        parameters = {"distortion_increment": None, "bond_distortions": list(options["bond_distortions"]),
                      "local_rattle": options["local_rattle"], "mc_rattle_parameters": {"stdev": meta["stdev_A"]}}
        entry = defects.setdefault(defect, {"unique_site": meta["defect_frac_coords"], "charges": {}})
        if meta.get("defect_site_index") is not None:
            entry["defect_site_index"] = meta["defect_site_index"]
        block: dict[str, Any] = {"num_nearest_neighbours": meta["num_nearest_neighbours"],
                                 "distorted_atoms": meta["distorted_atoms"], "distortion_parameters": parameters}
        if gs is not None and name in gs.index:
            row = gs.loc[name]
            block["activedefect"] = {"ground_state_distortion": row["distortion"], "frame": int(row["frame"]),
                                     "predicted_energy_eV": float(row["predicted_energy_eV"]),
                                     "level_energy_eV": float(row["level_energy_eV"]),
                                     "level_energy_source": row["level_energy_source"]}
        entry["charges"][str(int(charge))] = block
    return {"distortion_parameters": parameters, "defects": defects}


def write_shakenbreak(results: CampaignResults, out: Path) -> list[Path]:
    """The ShakeNBreak layout above under ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    metadata = shakenbreak_metadata(results)
    written = [out / "distortion_metadata.json"]
    written[0].write_text(json.dumps(metadata, indent=2))
    relaxed = {}
    if results.exploration is not None:
        relaxed = {(r.defect, r.charge, r.seed): r.atoms for r in results.exploration.results if "~" not in r.seed}
    ground = results.ground_states().set_index("state")["frame"] if results.has_ground_states else {}
    for (defect, charge, seed), frame in sorted(results.seed_frames.items()):
        name = charged_name(defect, charge)
        folder = out / name
        if not (folder / "distortion_metadata.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            single = {"distortion_parameters": metadata["distortion_parameters"],
                      "defects": {defect: {**metadata["defects"][defect],
                                           "charges": {str(charge): metadata["defects"][defect]["charges"][str(charge)]}}}}
            (folder / "distortion_metadata.json").write_text(json.dumps(single, indent=2))
            written.append(folder / "distortion_metadata.json")
            if name in ground:
                write_poscar(results.store.get_frame(int(ground[name])), folder / "groundstate_POSCAR")
                written.append(folder / "groundstate_POSCAR")
        write_poscar(results.store.get_frame(frame), folder / seed / "POSCAR")
        written.append(folder / seed / "POSCAR")
        if (defect, charge, seed) in relaxed:
            write_poscar(relaxed[(defect, charge, seed)], folder / seed / "CONTCAR")
            written.append(folder / seed / "CONTCAR")
    return written


def write_minima(results: CampaignResults, out: Path) -> list[Path]:
    """Every minimum of the last exploration as ``<state>/rank-K.extxyz`` and ``.vasp``
    (rank 0 is the ground state), with its energies and distortion in the extxyz info."""
    written = []
    minima = results.minima()
    if minima.empty:
        return written
    frames = results.store.get_frames(minima["frame"].tolist())
    for (_, row), atoms in zip(minima.iterrows(), frames):
        atoms.info = {CHARGE_KEY: int(row["charge"]), SPIN_KEY: atoms.info[SPIN_KEY], "defect": row["defect"],
                      "rank": int(row["rank"]), "predicted_energy_eV": float(row["predicted_energy_eV"]),
                      "relative_energy_eV": float(row["relative_energy_eV"]), "distortion": row["distortion"]}
        base = out / row["state"] / f"rank-{int(row['rank'])}"
        base.parent.mkdir(parents=True, exist_ok=True)
        write(base.with_suffix(".extxyz"), atoms, format="extxyz")
        write_poscar(atoms, base.with_suffix(".vasp"))
        written += [base.with_suffix(".extxyz"), base.with_suffix(".vasp")]
    return written


def write_models(results: CampaignResults, out: Path) -> list[Path]:
    """The final committee (``member-K.model``), one member alone (``model.model``) and
    ``calculator.json``: the ``MACECalculator`` arguments that reproduce the campaign's
    predictions (heads, charge/spin info keys, dtype)."""
    paths = results.final_model_paths
    if not paths:
        return []
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        shutil.copy2(path, out / path.name)
        written.append(out / path.name)
    shutil.copy2(paths[0], out / "model.model")
    written.append(out / "model.model")
    committee = results.committee
    usage = {
        "committee": {"model_paths": [p.name for p in paths]},
        "single": {"model_paths": "model.model"},
        "kwargs": {"head": "high", "info_keys": INFO_KEYS, "default_dtype": committee.dtype, "device": "cpu"},
        "heads": committee.heads,
        "charges": list(committee.charge_range() or ()),
        "note": "set atoms.info['total_charge'] (and 'total_spin', the multiplicity) on every structure",
    }
    (out / "calculator.json").write_text(json.dumps(usage, indent=2))
    written.append(out / "calculator.json")
    return written
