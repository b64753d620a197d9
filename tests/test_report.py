"""Report figures drawn from known data: each draw function returns what it drew."""

import json

import numpy as np
import pandas as pd
import pytest

from activedefect.results import figures
from activedefect.spec import SpecError, parse_spec


def _points(offset: float) -> list[dict]:
    seeds = {"Unperturbed": 0.0, "Bond_Distortion_-30.0%": -0.4, "Bond_Distortion_0.0%": -0.05,
             "Bond_Distortion_30.0%": 0.2, "Dimer": -0.6}
    return [{"seed": s, "energy_eV": offset + e, "std_eV": 0.02, "energy_rel_eV": e,
             "high_eV": offset + e + 0.01 if s in ("Dimer", "Unperturbed") else None,
             "high_rel_eV": e + 0.01 if s in ("Dimer", "Unperturbed") else None,
             "status": "max_steps" if s == "Bond_Distortion_30.0%" else "converged"}
            for s, e in seeds.items()]


def test_energy_vs_distortion_draws_every_seed(tmp_path):
    data = {"v_Si_0": _points(-800.0), "v_Si_-2": _points(-810.0)[:3]}
    drawn = figures.draw_energy_vs_distortion(data, tmp_path)
    for suffix in ("png", "svg", "json"):
        assert (tmp_path / f"energy_vs_distortion.{suffix}").stat().st_size > 0
    panel = drawn["panels"]["v_Si_0"]
    assert panel["n_points"] == 5 and panel["n_relaxed"] == 4 and panel["n_high_labels"] == 2
    assert panel["x"] == {"Unperturbed": 0.0, "Bond_Distortion_-30.0%": -30.0, "Bond_Distortion_0.0%": 0.0,
                          "Bond_Distortion_30.0%": 30.0, "Dimer": 45.0}
    lo, hi = panel["ylim"]
    assert lo <= -0.62 and hi >= 0.22  # every point with its spread is inside
    assert drawn["panels"]["v_Si_-2"]["n_points"] == 3
    assert json.loads((tmp_path / "energy_vs_distortion.json").read_text())["input"] == data


def test_parity_reports_held_out_rmse(tmp_path):
    data = {"high": {"held_out_label_eV": [-10.0, -12.0], "held_out_predicted_eV": [-10.3, -11.6],
                     "held_out_std_eV": [0.1, 0.1], "held_out_charge": [0, -1],
                     "train_label_eV": [-9.0, -13.0, -11.0], "train_predicted_eV": [-9.1, -13.2, -11.0],
                     "train_std_eV": [0.0] * 3, "train_charge": [0, 0, -1]}}
    drawn = figures.draw_parity(data, tmp_path)["panels"]["high"]
    assert drawn["n_held_out"] == 2 and drawn["n_train"] == 3
    assert drawn["held_out_rmse_eV"] == pytest.approx(np.sqrt((0.3**2 + 0.4**2) / 2))
    assert drawn["xlim"] == drawn["ylim"] and drawn["xlim"][0] < -13.2 and drawn["xlim"][1] > -9.0


def test_learning_curves_follow_the_history(tmp_path):
    history = pd.DataFrame({
        "generation": [1, 1, 2, 2], "state": ["v_0", "v_-1", "v_0", "v_-1"],
        "max_force_spread_eV_A": [0.3, 0.2, 0.1, 0.05],
        "labels_low": [10, 10, 25, 25], "labels_high": [2, 2, 5, 5],
        "energy_rmse_low_eV": [0.5, 0.5, 0.2, 0.2], "energy_rmse_high_eV": [0.9, 0.9, 0.4, 0.4],
    })
    series = figures.draw_learning_curves(history, tmp_path)["series"]
    assert series["labels_low"] == {"generation": [1, 2], "values": [10, 25]}
    assert series["rmse_high"]["values"] == [0.9, 0.4]
    assert series["spread_v_-1"] == {"generation": [1, 2], "values": [0.2, 0.05]}


def test_pca_counts_points_per_charge(tmp_path):
    data = {"frame": [0, 1, 2, 3, 4], "charge": [0, 0, -1, -1, -1], "pc1": [0.0, 0.1, 1.0, 1.1, 1.2],
            "pc2": [0.0, 0.2, -1.0, -0.9, -1.1], "ground_state_frames": [1, 4], "explained_variance_ratio": [0.8, 0.15]}
    drawn = figures.draw_pca(data, tmp_path)
    assert drawn["points_per_charge"] == {"0": 2, "-1": 3}
    assert drawn["n_ground_states"] == 2
    assert drawn["xlim"][0] < 0.0 and drawn["xlim"][1] > 1.2


def test_cc_diagram_minima_where_the_curves_have_them(tmp_path):
    q = np.linspace(-1.0, 5.0, 13)
    data = {"state_a": "v_0", "state_b": "v_-1", "delta_Q_amu_A": 4.0, "Q_amu_A": q.tolist(),
            "curves": {"v_0": {"charge": 0, "energy_rel_eV": (0.1 * q**2).tolist(), "std_eV": [0.01] * 13},
                       "v_-1": {"charge": -1, "energy_rel_eV": (0.5 + 0.1 * (q - 4.0) ** 2).tolist(),
                                "std_eV": [0.01] * 13}}}
    drawn = figures.draw_cc(data, tmp_path)
    assert drawn["n_points"] == 13
    assert drawn["Q_of_minimum"] == {"v_0": 0.0, "v_-1": 4.0}


def _levels_input(reference):
    return {"vbm_eV": 1.0, "band_gap_eV": 2.0, "vbm_source": "spec",
            "defects": {"v_X": {"energies_eV": {"0": -100.0, "-1": -98.5, "-2": -96.0}, "corrections_eV": {},
                                "fermi_window_eV": [0.0, 2.0], "reference_eV": reference}}}


def test_levels_diagram_without_chemical_potentials_shows_levels(tmp_path):
    drawn = figures.draw_levels(_levels_input(None), tmp_path)
    assert drawn["kind"] == "transition_levels"
    assert drawn["defects"]["v_X"]["levels_eV"] == pytest.approx({"(0/-1)": 0.5, "(-1/-2)": 1.5})
    assert drawn["defects"]["v_X"]["stable"] == ["(0/-1)", "(-1/-2)"]


def test_levels_diagram_shows_the_negative_u_level(tmp_path):
    data = _levels_input(None)
    data["defects"]["v_X"]["energies_eV"] = {"0": 0.0, "-1": 2.0, "-2": 3.2}  # VBM 1: (0/-1) 1.0, (-1/-2) 0.2
    drawn = figures.draw_levels(data, tmp_path)["defects"]["v_X"]
    assert drawn["levels_eV"] == pytest.approx({"(0/-1)": 1.0, "(-1/-2)": 0.2, "(0/-2)": 0.6})
    assert drawn["stable"] == ["(0/-2)"]


def test_formation_energy_diagram_with_a_reference(tmp_path):
    drawn = figures.draw_levels(_levels_input(-105.0), tmp_path)
    assert drawn["kind"] == "formation_energy"
    d = drawn["defects"]["v_X"]
    assert d["kinks_eV"] == pytest.approx([0.5, 1.5])
    # E_f(0) = -100 + 105 = 5 at every E_F; the envelope falls to E_f(-2) at E_F = 2: -96 + 105 - 2 (1 + 2) = 3
    assert d["envelope_max_eV"] == pytest.approx(5.0)
    assert d["envelope_min_eV"] == pytest.approx(3.0)


def test_levels_block_of_the_spec(tmp_path):
    from campaign_support import SPEC

    spec = parse_spec({**SPEC, "levels": {"vbm_eV": 1.2, "corrections_eV": {"v_Si_-2": 0.4},
                                          "chemical_potentials_eV": {"Si": -5.0, "C": -9.0}}}, tmp_path)
    assert spec.levels.corrections_eV == {"v_Si_-2": 0.4}
    with pytest.raises(SpecError, match="levels.corrections_eV"):
        parse_spec({**SPEC, "levels": {"corrections_eV": {"v_Si": 0.4}}}, tmp_path)


def test_distortion_points_keep_each_relaxation_on_its_own_reference(tmp_path):
    """The landscape's energies are on the `high` head, relative to its relaxed Unperturbed
    seed; a relaxation stopped on the `low` head (start_head: low) or exploded has none."""
    from ase.build import bulk

    from activedefect.labels import LabelResult
    from activedefect.results.figure_data import distortion_points
    from activedefect.search.relaxation import RelaxResult
    from activedefect.search.selection import Exploration
    from activedefect.store.zarr_store import Store

    def result(i: int, seed: str, head: str, energy: float, status: str = "converged") -> RelaxResult:
        atoms = bulk("Si", "diamond", a=5.43).repeat(2)
        atoms.rattle(0.01, seed=i)
        atoms.info.update(total_charge=0, total_spin=1, defect="v_Si")
        return RelaxResult(seed, "v_Si", 0, 1, status, atoms, energy, 0.02, 0.01, 0.01, 10, head=head)

    results = [result(0, "Unperturbed", "high", -100.0), result(1, "Bond_Distortion_-30.0%", "high", -100.5),
               result(2, "Bond_Distortion_30.0%", "low", -90.0, "cut_untrusted"),
               result(3, "Dimer", "high", float("nan"), "exploded"),
               result(4, "Unperturbed~rattle0", "high", -100.6)]  # not a ShakeNBreak seed
    with Store.open(tmp_path / "store.zarr") as store:
        frames = store.add_frames([r.atoms for r in results[:2]])
        forces = np.zeros((len(results[0].atoms), 3))
        store.add_labels("high", [(frames[1], LabelResult("ok", "h", -100.3, forces, metadata={"wall_s": 1.0}))])
        store.add_labels("low", [(frames[0], LabelResult("ok", "l", -95.0, forces, metadata={"wall_s": 1.0})),
                                 (frames[1], LabelResult("ok", "l", -95.2, forces, metadata={"wall_s": 1.0}))])
        points = distortion_points(Exploration(results, {}, {}), store, {"low": "l", "high": "h"})["v_Si_0"]
    by_seed = {p["seed"]: p for p in points}
    assert set(by_seed) == {"Unperturbed", "Bond_Distortion_-30.0%", "Bond_Distortion_30.0%", "Dimer"}
    assert by_seed["Bond_Distortion_-30.0%"]["energy_rel_eV"] == pytest.approx(-0.5)
    assert by_seed["Bond_Distortion_-30.0%"]["high_rel_eV"] == pytest.approx(-0.3)  # same reference: error 0.2 eV
    assert by_seed["Bond_Distortion_-30.0%"]["low_rel_eV"] == pytest.approx(-0.2)  # low's own reference
    assert by_seed["Bond_Distortion_30.0%"]["head"] == "low" and by_seed["Bond_Distortion_30.0%"]["energy_rel_eV"] is None
    assert by_seed["Dimer"]["energy_eV"] is None and by_seed["Dimer"]["energy_rel_eV"] is None
    assert [by_seed[s]["x_percent"] for s in ("Bond_Distortion_-30.0%", "Unperturbed", "Bond_Distortion_30.0%")] == [
        -30.0, 0.0, 30.0]
    assert json.loads(json.dumps(points, allow_nan=False)) == points  # JSON the browser can parse

    drawn = figures.draw_energy_vs_distortion({"v_Si_0": points}, tmp_path)["panels"]["v_Si_0"]
    assert drawn["n_points"] == 2 and drawn["x"]["Unperturbed"] == 0.0
