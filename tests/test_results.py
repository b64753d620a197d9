"""Results of a finished campaign: ground states, levels, history, the report and the
take-aways of export, checked against the campaign's own records."""

import json
import re
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from pymatgen.core import Structure
from typer.testing import CliRunner

from activedefect import Campaign
from activedefect.cli import app
from activedefect.oracle.backends.xtb import XtbBackend
from activedefect.results.defect_site import local_bonding, root_distortion
from activedefect.seeds.defects import charged_name
from activedefect.seeds.host import bundled_structure
from activedefect.seeds.preparation import host_supercell
from activedefect.store.workspace import Workspace


def test_local_bonding_of_a_known_site():
    atoms = Atoms("C4", positions=[[1, 0, 0], [0, 2, 0], [0, 0, 3], [5, 5, 5]], cell=[10, 10, 10], pbc=True)
    bonding = local_bonding(atoms, np.zeros(3), [0, 1, 2])
    assert bonding.distances_A == pytest.approx([1.0, 2.0, 3.0])
    assert bonding.pair_distances_A == pytest.approx(sorted([np.sqrt(5), np.sqrt(10), np.sqrt(13)]))
    # minimum image: an atom at 9.5 Å along x is 0.5 Å from the origin
    atoms.positions[0] = [9.5, 0, 0]
    assert local_bonding(atoms, np.zeros(3), [0]).distances_A == pytest.approx([0.5])
    assert root_distortion("Bond_Distortion_-30.0%~rattle0~from_q-1") == "Bond_Distortion_-30.0%"


def test_xtb_band_edges_of_sic():
    atoms = ase.io.read(bundled_structure("SiC_conv"))
    vbm, cbm = XtbBackend({"method": "GFN1-xTB", "electronic_temperature": 1000}).band_edges_eV(atoms)
    assert vbm < cbm and 0.5 < cbm - vbm < 6.0
    shifted = atoms.copy()
    shifted.translate([0.3, 0.1, 0.2])  # a rigid shift changes no orbital energy
    assert XtbBackend({"method": "GFN1-xTB", "electronic_temperature": 1000}).band_edges_eV(shifted) == \
        pytest.approx((vbm, cbm), abs=1e-6)


# ------------------------------------------------------------------ finished campaign
@pytest.fixture(scope="module")
def campaign(finished: Path) -> Campaign:
    return Campaign.open(finished)


@pytest.mark.slow
def test_ground_states_table(campaign: Campaign, finished: Path):
    gs = campaign.ground_states()
    state = Workspace(finished).read_state()
    assert sorted(gs["state"]) == sorted(state["confirm"])
    for _, row in gs.iterrows():
        record, confirm = state["ground_states"].get(row["state"]), state["confirm"][row["state"]]
        assert row["frame"] == confirm["frame"] and row["seed"] == confirm["seed"]
        if record is not None:
            assert row["predicted_energy_eV"] == record["predicted_energy_eV"]
        atoms = ase.io.read(row["extxyz"])
        structure = Structure.from_file(row["poscar"])
        assert atoms.info["total_charge"] == row["charge"]
        assert structure.composition.formula == "Si7 C8" and len(atoms) == 15
        assert row["neighbour_elements"] == ["C"] * 4  # the four C around the Si vacancy
        assert len(row["neighbour_pair_distances_A"]) == 6
        assert all(0.8 < d < 3.5 for d in row["neighbour_distances_A"])
        confirmed = state["confirm"][row["state"]]["final_energy_eV"]
        assert row["level_energy_source"] == "high"
        assert row["level_energy_eV"] == min(e for e in (confirmed, row["high_energy_eV"]) if not np.isnan(e))
        assert row["distortion"] in ("Unperturbed", "Dimer") or row["distortion"].startswith("Bond_Distortion_")
    minima = campaign.minima()
    assert (minima.groupby("state")["rank"].min() == 0).all()
    assert (minima["relative_energy_eV"] >= 0).all()


@pytest.mark.slow
def test_transition_levels_from_the_ground_state_energies(campaign: Campaign):
    gs = campaign.ground_states().set_index("charge")
    table = campaign.transition_levels()
    assert table["label"].tolist() == ["(0/-2)"] and table["adjacent"].all()
    row = table.iloc[0]
    vbm, _ = XtbBackend(dict(campaign.spec.fidelities["high"].settings)).band_edges_eV(host_supercell(campaign.spec))
    expected = (gs.loc[0, "level_energy_eV"] - gs.loc[-2, "level_energy_eV"]) / (-2 - 0) - vbm
    assert row["level_eV"] == pytest.approx(expected)
    assert row["vbm_eV"] == pytest.approx(vbm) and row["vbm_source"].startswith("computed")


@pytest.mark.slow
def test_history_matches_state_and_metrics(campaign: Campaign, finished: Path):
    history = campaign.history()
    state = Workspace(finished).read_state()
    assert len(history) == len({(h["generation"], h["state"]) for h in state["history"]})
    evaluations = {m["generation"]: m for m in Workspace(finished).metrics() if m.get("kind") == "evaluation"}
    for _, row in history.iterrows():
        metric = evaluations[row["generation"]]
        assert row["labels_high"] == metric["n_train"]["high"] + metric["n_valid"]["high"]
        assert row["energy_rmse_low_eV"] == pytest.approx(metric["per_head"]["low"]["energy_rmse_eV"])


@pytest.mark.slow
def test_report_figures_and_their_data(campaign: Campaign, finished: Path, tmp_path: Path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["campaign", "report", str(finished), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    linked = set(re.findall(r'(?:src|href)="([^"]+)"', page))
    assert {"energy_vs_distortion.png", "parity.png", "learning_curves.png", "pca.png",
            "configuration_coordinate.png", "levels.png"} <= linked
    assert all((out / name).is_file() for name in linked)  # relative files only: opens from disk
    seeds = {}
    for s in Workspace(finished).read_state()["seeds"]:
        seeds.setdefault(charged_name(s["defect"], s["charge"]), []).append(s["seed"])
    distortion = json.loads((out / "energy_vs_distortion.json").read_text())
    assert set(distortion["panels"]) == set(seeds)
    for state, names in seeds.items():
        assert distortion["panels"][state]["n_points"] == len(names)
        assert sorted(distortion["panels"][state]["x"]) == sorted(names)
    parity = json.loads((out / "parity.json").read_text())
    store_high = campaign.results().store.labelled_atoms("high", campaign.settings_hash("high"))
    assert parity["panels"]["high"]["n_held_out"] + parity["panels"]["high"]["n_train"] == len(store_high)
    pca = json.loads((out / "pca.json").read_text())
    assert set(pca["points_per_charge"]) == {"0", "-2"} and pca["n_ground_states"] == 2
    cc = json.loads((out / "configuration_coordinate.json").read_text())
    assert cc["input"]["state_a"] == "v_Si_0" and cc["input"]["state_b"] == "v_Si_-2" and cc["n_points"] == 17
    lv = json.loads((out / "levels.json").read_text())
    assert lv["kind"] == "transition_levels"  # no chemical potentials in the tiny spec
    table = campaign.transition_levels()
    assert list(lv["defects"]["v_Si"]["levels_eV"].values()) == pytest.approx(table["level_eV"].tolist())


@pytest.mark.slow
def test_export_takeaways(campaign: Campaign, finished: Path, tmp_path: Path):
    from mace.calculators import MACECalculator
    from shakenbreak.analysis import _read_distortion_metadata

    out = tmp_path / "export"
    campaign.export(out)
    state = Workspace(finished).read_state()
    for name in state["ground_states"]:
        folder = out / "shakenbreak" / name
        metadata = _read_distortion_metadata(str(folder))
        charge = name.rsplit("_", 1)[1].lstrip("+")
        assert metadata["defects"]["v_Si"]["charges"][charge]["num_nearest_neighbours"] >= 1
        assert Structure.from_file(folder / "groundstate_POSCAR").composition.formula == "Si7 C8"
        seeds = [s["seed"] for s in state["seeds"] if charged_name(s["defect"], s["charge"]) == name]
        assert seeds
        for seed in seeds:
            assert len(ase.io.read(folder / seed / "POSCAR", format="vasp")) == 15
            assert (folder / seed / "CONTCAR").is_file()
    assert len(list((out / "minima").glob("*/rank-0.extxyz"))) == len(state["ground_states"])
    # the models load in MACECalculator with calculator.json's arguments and reproduce ours
    usage = json.loads((out / "models" / "calculator.json").read_text())
    atoms = ase.io.read(out / "ground_states" / "v_Si_-2.extxyz")
    committee = campaign.results().committee
    energies = {}
    for charge in (0, -2):
        atoms.info["total_charge"] = charge
        calc = MACECalculator(model_paths=str(out / "models" / usage["single"]["model_paths"]), **usage["kwargs"])
        atoms.calc = calc
        energies[charge] = atoms.get_potential_energy()
        single = type(committee)([committee.models[0]])
        assert energies[charge] == pytest.approx(single.predict([atoms], "high")[0].energy_mean_eV, abs=1e-4)
    assert abs(energies[0] - energies[-2]) > 1e-3  # the charge reaches the model
    calc = MACECalculator(model_paths=[str(out / "models" / p) for p in usage["committee"]["model_paths"]],
                          **usage["kwargs"])
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(committee.predict([atoms], "high")[0].energy_mean_eV, abs=1e-4)
