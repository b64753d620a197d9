"""The charge-embedded, multi-fidelity MACE committee, trained for real on real xTB labels.

Data: a 3C-SiC 8-atom cubic cell (a = 4.36 Å) with a Si vacancy (7 atoms), rattled
(0.02-0.12 Å) and strained (±1 %), at charges 0 and -2 (singlets). ``low`` = GFN1-xTB,
``high`` = IPEA1-xTB: on these cells the two differ by more than a constant (measured:
energy difference std 0.37 eV per cell, force difference RMS 0.3-0.5 eV/Å; GFN2-xTB lost
SCF convergence on 5 of 24 such frames, IPEA1 on none). Labels are computed once per
test session; the models are tiny (16 channels, r_max 4 Å) and train for seconds.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import CalculationFailed

from activedefect.geometry import CHARGE_KEY, SPIN_KEY
from activedefect.model.committee import (
    REF_ENERGY_KEY,
    REF_FORCES_KEY,
    Committee,
    CommitteeCalculator,
    ModelConfig,
    TrainSettings,
    evaluate,
    split_holdout,
    train_member,
)
from activedefect.model.graphs import LOSS_WEIGHT_KEY
from activedefect.model.mace_model import load_model, model_meta
from activedefect.model.member_training import undo_worker_malloc_trim
from activedefect.model.training import emphasize_minima

torch.set_num_threads(1)

CHARGES = (0, -2)
LOW, HIGH = "GFN1-xTB", "IPEA1-xTB"
CONFIG = ModelConfig(elements=("Si", "C"), charges=CHARGES, num_channels=16, r_max=4.0, radial_MLP=(32, 32))
EPOCHS = 25
WARM_EPOCHS = 5


def host() -> Atoms:
    atoms = bulk("SiC", "zincblende", a=4.36, cubic=True)
    del atoms[0]  # V_Si
    return atoms


def geometries(n: int, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = host()
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.01, 0.01)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rng.uniform(0.02, 0.12), atoms.positions.shape)
        out.append(atoms)
    return out


def with_charge(atoms: Atoms, charge: int) -> Atoms:
    atoms = atoms.copy()
    atoms.info[CHARGE_KEY] = charge
    atoms.info[SPIN_KEY] = 1 + (int(atoms.numbers.sum()) - charge) % 2  # lowest multiplicity
    return atoms


def label(frames: list[Atoms], method: str) -> list[Atoms]:
    """xTB energy and forces as REF_energy / REF_forces; frames whose SCF fails are dropped."""
    from tblite.ase import TBLite

    out = []
    for atoms in frames:
        work = atoms.copy()
        work.calc = TBLite(
            method=method, charge=atoms.info[CHARGE_KEY], multiplicity=atoms.info[SPIN_KEY],
            electronic_temperature=300.0, verbosity=0,
        )
        try:
            energy, forces = work.get_potential_energy(), work.get_forces()
        except CalculationFailed:
            continue
        labelled = atoms.copy()
        labelled.info[REF_ENERGY_KEY] = float(energy)
        labelled.arrays[REF_FORCES_KEY] = np.array(forces)
        out.append(labelled)
    return out


@pytest.fixture(scope="session")
def dataset() -> dict[str, list[Atoms]]:
    """low: 32 geometries per charge (GFN1); high: IPEA1 on the first 4 of them per
    charge (~12 %, like the campaign's stratified high subset); test: 6 new geometries
    per charge (GFN1); more: 8 further GFN1 geometries per charge (a next generation)."""
    low, high, test, more = [], [], [], []
    for i, q in enumerate(CHARGES):
        train_geoms = [with_charge(a, q) for a in geometries(32, seed=10 + i)]
        low += label(train_geoms, LOW)
        high += label(train_geoms[:4], HIGH)
        test += label([with_charge(a, q) for a in geometries(6, seed=20 + i)], LOW)
        more += label([with_charge(a, q) for a in geometries(8, seed=30 + i)], LOW)
    assert len(low) == 64 and len(test) == 12 and len(high) >= 6
    return {"low": low, "high": high, "test": test, "more": more}


@pytest.fixture(scope="session")
def generations(dataset, tmp_path_factory) -> dict[str, list]:
    """The campaign's flow with a committee of two (seed 1 bootstrapped): generation 0
    trains fresh on low labels only; generation 1 warm-starts from it with new low
    frames and the first high labels."""
    root = tmp_path_factory.mktemp("models")
    paths: dict[str, list] = {"gen0": [], "gen1": []}
    for k in range(2):
        gen0 = root / "gen-000" / f"member-{k}.model"
        report = train_member({"low": dataset["low"], "high": []}, CONFIG, seed=k, epochs=EPOCHS, out_path=gen0, bootstrap=k == 1)
        assert report.start == "fresh" and report.epochs == EPOCHS and not report.reused and report.bootstrap == (k == 1)
        assert report.n_train == {"low": 64, "high": 0} and report.fitted_heads == ["low"]
        assert report.train_rmse["low"]["forces_eV_A"] < 0.5 * report.initial_train_rmse["low"]["forces_eV_A"]
        gen1 = root / "gen-001" / f"member-{k}.model"
        data = {"low": dataset["low"] + dataset["more"], "high": dataset["high"]}
        report = train_member(data, CONFIG, seed=k, epochs=WARM_EPOCHS, out_path=gen1, init_from=gen0, bootstrap=k == 1)
        assert report.start == "warm" and report.fitted_heads == ["low", "high"]
        paths["gen0"].append(gen0)
        paths["gen1"].append(gen1)
    for gen in ("gen-000", "gen-001"):  # atomic writes leave no temporary files
        assert sorted(p.name for p in (root / gen).iterdir()) == ["member-0.model", "member-1.model"]
    return paths


@pytest.fixture(scope="session")
def committee_paths(generations) -> list:
    return generations["gen1"]


@pytest.fixture(scope="session")
def committee(committee_paths) -> Committee:
    return Committee.load(committee_paths)


# ------------------------------------------------------------------ charge handling


def test_same_geometry_at_two_charges_gets_different_energies(committee, dataset):
    atoms = dataset["test"][0]
    neutral, charged = committee.predict([with_charge(atoms, 0), with_charge(atoms, -2)], "low")
    assert abs(neutral.energy_mean_eV - charged.energy_mean_eV) > 1.0
    assert not np.allclose(neutral.forces_mean_eV_A, charged.forces_mean_eV_A, atol=1e-3)


def test_charge_states_are_told_apart_on_held_out_frames(committee, dataset):
    """GFN1 energies of the two charge states differ by ~24 eV per cell; with the true
    charge the committee must be far closer than with the other one."""
    test = dataset["test"]
    swapped = []
    for atoms in test:
        other = with_charge(atoms, CHARGES[1] if atoms.info[CHARGE_KEY] == CHARGES[0] else CHARGES[0])
        swapped.append(other)  # the labels still belong to the true charge
    true_err = evaluate(committee, {"low": test})["per_head"]["low"]
    swapped_err = evaluate(committee, {"low": swapped})["per_head"]["low"]
    assert swapped_err["energy_rmse_eV"] >= 3 * true_err["energy_rmse_eV"], (true_err, swapped_err)
    for q in ("0", "-2"):
        assert swapped_err["per_charge"][q]["energy_rmse_eV"] >= 3 * true_err["per_charge"][q]["energy_rmse_eV"]


def test_missing_charge_is_an_error_never_neutral(committee, dataset):
    atoms = dataset["test"][0].copy()
    del atoms.info[CHARGE_KEY]
    with pytest.raises(KeyError, match="total_charge"):
        committee.predict([atoms], "low")
    atoms.calc = CommitteeCalculator(committee, "low")
    with pytest.raises(KeyError, match="total_charge"):
        atoms.get_potential_energy()


def test_charge_outside_the_embedding_is_an_error(committee, dataset):
    assert committee.charge_range() == (-3, 1)  # campaign charges -2..0 with a margin of 1
    with pytest.raises(ValueError, match=r"total_charge.*= 2 is outside.*-3\.\.1"):
        committee.predict([with_charge(dataset["test"][0], 2)], "low")
    with pytest.raises(ValueError, match="not an integer"):
        atoms = dataset["test"][0].copy()
        atoms.info[CHARGE_KEY] = -0.5
        committee.predict([atoms], "low")


def test_unknown_head_is_an_error_never_the_last_head(committee, dataset):
    with pytest.raises(ValueError, match="unknown head 'medium'.*'low', 'high'"):
        committee.predict(dataset["test"][:1], "medium")
    with pytest.raises(ValueError, match="unknown head"):
        CommitteeCalculator(committee, "HIGH")
    with pytest.raises(ValueError, match="unknown head"):
        evaluate(committee, {"medium": dataset["test"]})


def test_heads_trained_on_different_fidelities_predict_differently(committee, dataset):
    test = dataset["test"]
    low = committee.predict(test, "low")
    high = committee.predict(test, "high")
    # IPEA1 and GFN1 references differ by ~40 eV per cell; the high head started as a
    # copy of the low head at generation 1 and has moved its forces since
    assert all(abs(lo.energy_mean_eV - hi.energy_mean_eV) > 5.0 for lo, hi in zip(low, high))
    assert np.mean([np.abs(lo.forces_mean_eV_A - hi.forces_mean_eV_A).mean() for lo, hi in zip(low, high)]) > 0.005
    ref = np.array([a.info[REF_ENERGY_KEY] for a in test])
    assert np.abs([p.energy_mean_eV for p in low] - ref).mean() < np.abs([p.energy_mean_eV for p in high] - ref).mean()


# -------------------------------------------------------------------------- prediction


def test_predict_is_one_batched_call_per_member_and_matches_single_calls(committee, dataset):
    frames = dataset["test"]
    before = committee.n_model_calls
    batched = committee.predict(frames, "low")
    assert committee.n_model_calls - before == committee.size == 2
    for atoms, pred in zip(frames[:3], batched[:3]):
        (single,) = committee.predict([atoms], "low")
        assert single.energy_mean_eV == pytest.approx(pred.energy_mean_eV, abs=1e-4)
        np.testing.assert_allclose(single.forces_mean_eV_A, pred.forces_mean_eV_A, atol=1e-4)
    pred = batched[0]
    assert pred.forces_mean_eV_A.shape == (7, 3) and pred.forces_std_eV_A.shape == (7,)
    assert pred.member_energies_eV.shape == (2,)
    assert pred.energy_std_eV == pytest.approx(np.std(pred.member_energies_eV))
    assert pred.max_force_std_eV_A == pytest.approx(pred.forces_std_eV_A.max())
    assert pred.max_force_std_eV_A > 0  # two differently seeded members disagree
    assert committee.predict([], "low") == []


def test_descriptors_are_per_atom_invariants_that_see_the_charge(committee, dataset):
    atoms = dataset["test"][0]
    rotated = atoms.copy()
    rotated.rotate(90, "z", rotate_cell=True)
    d0, d2, drot = committee.descriptors([with_charge(atoms, 0), with_charge(atoms, -2), with_charge(rotated, 0)])
    assert d0.shape == (7, 32) and np.all(np.isfinite(d0))  # 16 channels x 2 interactions
    assert not np.allclose(d0, d2, atol=1e-3)
    np.testing.assert_allclose(d0, drot, atol=1e-4)
    (pred,) = committee.predict([with_charge(atoms, 0)], "high", descriptors=True)
    np.testing.assert_allclose(pred.descriptors, d0, atol=1e-5)


def test_committee_spread_is_larger_off_distribution(committee, dataset):
    on = committee.predict(dataset["test"], "low")
    off_frames = []
    rng = np.random.default_rng(5)
    for atoms in dataset["test"]:
        far = atoms.copy()
        far.set_cell(far.cell * 0.92, scale_atoms=True)
        far.positions += rng.normal(0, 0.25, far.positions.shape)
        off_frames.append(far)
    off = committee.predict(off_frames, "low")
    spread_on = np.mean([p.max_force_std_eV_A for p in on])
    spread_off = np.mean([p.max_force_std_eV_A for p in off])
    assert spread_off > 2 * spread_on, (spread_on, spread_off)


def test_calculator_recalculates_when_only_the_charge_changes(committee, dataset):
    atoms = with_charge(dataset["test"][0], 0)
    atoms.calc = CommitteeCalculator(committee, "high")
    e0 = atoms.get_potential_energy()
    (pred,) = committee.predict([atoms], "high")
    assert e0 == pytest.approx(pred.energy_mean_eV)
    np.testing.assert_allclose(atoms.get_forces(), pred.forces_mean_eV_A)
    assert atoms.calc.results["energy_std"] == pytest.approx(pred.energy_std_eV)
    assert atoms.calc.results["max_force_std"] == pytest.approx(pred.max_force_std_eV_A)
    assert atoms.calc.results["forces_std"].shape == (7,)
    atoms.info[CHARGE_KEY] = -2
    assert abs(atoms.get_potential_energy() - e0) > 1.0


def test_saved_member_runs_in_mace_calculator_with_info_keys(committee_paths, dataset):
    from mace.calculators import MACECalculator

    path = committee_paths[0]
    calc = MACECalculator(
        model_paths=str(path), head="high", default_dtype="float32",
        info_keys={"total_charge": "total_charge", "total_spin": "total_spin"},
    )
    atoms = with_charge(dataset["test"][0], 0)
    atoms.calc = calc
    e_neutral = atoms.get_potential_energy()
    (ours,) = Committee.load([path]).predict([atoms], "high")
    assert e_neutral == pytest.approx(ours.energy_mean_eV, abs=1e-3)
    np.testing.assert_allclose(atoms.get_forces(), ours.forces_mean_eV_A, atol=1e-4)
    charged = with_charge(atoms, -2)
    charged.calc = calc
    calc.reset()
    assert abs(charged.get_potential_energy() - e_neutral) > 1.0


# ---------------------------------------------------------------------------- evaluation


def test_evaluate_reports_errors_and_calibration_per_head_and_charge(committee, dataset):
    metrics = evaluate(committee, {"low": dataset["test"], "high": []})
    json.dumps(metrics, allow_nan=False)
    assert metrics["committee_size"] == 2 and set(metrics["per_head"]) == {"low"}
    low = metrics["per_head"]["low"]
    assert low["n"] == 12 and set(low["per_charge"]) == {"0", "-2"}
    assert low["per_charge"]["0"]["n"] == 6
    preds = committee.predict(dataset["test"], "low")
    de = [p.energy_mean_eV - a.info[REF_ENERGY_KEY] for p, a in zip(preds, dataset["test"])]
    assert low["energy_rmse_eV"] == pytest.approx(np.sqrt(np.mean(np.square(de))))
    assert low["energy_rmse_meV_per_atom"] == pytest.approx(1000 * low["energy_rmse_eV"] / 7)
    assert 0 < low["force_rmse_eV_A"] < 2.0
    cal = low["calibration"]
    assert -1 <= cal["force_spread_error_spearman"] <= 1 and cal["force_error_to_spread"] > 0
    unlabelled = dataset["test"][0].copy()
    del unlabelled.info[REF_ENERGY_KEY]
    with pytest.raises(KeyError, match="REF_energy"):
        evaluate(committee, {"low": [unlabelled]})


def test_holdout_split_is_by_content_not_by_seed(dataset):
    frames = dataset["low"]
    train, valid = split_holdout(frames, 0.25)
    assert len(train) + len(valid) == len(frames) and 4 <= len(valid) <= 28
    again_train, again_valid = split_holdout(list(reversed(frames)), 0.25)
    assert {id(a) for a in valid} == {id(a) for a in again_valid}
    assert split_holdout(frames, 0.0) == (frames, [])


# ---------------------------------------------------------------------------- training


def test_existing_member_is_not_retrained(generations, dataset):
    path = generations["gen0"][0]
    mtime = os.stat(path).st_mtime_ns
    report = train_member({"low": dataset["low"][:4]}, CONFIG, seed=0, epochs=EPOCHS, out_path=path)
    assert report.reused and report.start == "fresh" and report.epochs == EPOCHS
    assert os.stat(path).st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different ModelConfig"):
        train_member({"low": dataset["low"][:4]}, ModelConfig(elements=("Si", "C"), charges=(0, -1)), 0, 1, path)


def test_head_without_data_predicts_like_the_fitted_head_until_it_has_labels(generations, dataset, tmp_path):
    gen0 = Committee.load(generations["gen0"])  # trained on low labels only
    frames = dataset["test"][:4]
    for lo, hi in zip(gen0.predict(frames, "low"), gen0.predict(frames, "high")):
        assert hi.energy_mean_eV == pytest.approx(lo.energy_mean_eV, abs=1e-4)
        np.testing.assert_allclose(hi.forces_mean_eV_A, lo.forces_mean_eV_A, atol=1e-5)
    # generation 1 had high labels: the high head got its own E0s (IPEA1 is ~40 eV off GFN1)
    e0 = load_model(generations["gen1"][0]).atomic_energies_fn.atomic_energies
    assert not torch.allclose(e0[0], e0[1], atol=1.0)
    # heads and charges are fixed at generation 0: a different config cannot warm start
    other = ModelConfig(elements=("Si", "C"), charges=(0, -1), num_channels=16, r_max=4.0, radial_MLP=(32, 32))
    with pytest.raises(ValueError, match="cannot warm start.*charges"):
        train_member({"low": dataset["low"]}, other, seed=3, epochs=1, out_path=tmp_path / "x.model", init_from=generations["gen1"][0])
    assert not (tmp_path / "x.model").exists()


def test_training_data_errors_name_the_field(dataset, tmp_path):
    atoms = dataset["low"][0].copy()
    del atoms.info[CHARGE_KEY]
    with pytest.raises(KeyError, match="total_charge"):
        train_member({"low": [atoms]}, CONFIG, seed=0, epochs=1, out_path=tmp_path / "a.model")
    with pytest.raises(ValueError, match="heads \\['dft'\\]"):
        train_member({"dft": dataset["low"][:2]}, CONFIG, seed=0, epochs=1, out_path=tmp_path / "b.model")
    unlabelled = dataset["low"][0].copy()
    del unlabelled.arrays[REF_FORCES_KEY]
    with pytest.raises(KeyError, match="REF_forces"):
        train_member({"low": [unlabelled]}, CONFIG, seed=0, epochs=1, out_path=tmp_path / "c.model")
    with pytest.raises(ValueError, match="not in the model's elements"):
        train_member({"low": [dataset["low"][0]]}, ModelConfig(elements=("Si",), charges=(0,)), 0, 1, tmp_path / "d.model")
    assert not list(tmp_path.iterdir())


def test_warm_start_resumes_from_previous_weights(generations):
    """Generation 1 (generation 0's data plus 16 new frames and the high labels) starts
    from generation 0's weights: its low-head error before the first step is already
    near the trained one, and after 5 epochs it is where the fresh run got after 25,
    which after 5 epochs of its own was still far from its final loss."""
    fresh = model_meta(load_model(generations["gen0"][0]))["report"]
    warm = model_meta(load_model(generations["gen1"][0]))["report"]
    assert warm["start"] == "warm" and warm["init_from"] == str(generations["gen0"][0]) and warm["epochs"] == WARM_EPOCHS
    trained = fresh["train_rmse"]["low"]["forces_eV_A"]
    assert fresh["initial_train_rmse"]["low"]["forces_eV_A"] > 3 * trained
    assert warm["initial_train_rmse"]["low"]["forces_eV_A"] < 1.3 * trained
    assert warm["train_rmse"]["low"]["forces_eV_A"] < 1.25 * trained
    assert fresh["loss_history"][WARM_EPOCHS - 1] > 5 * fresh["final_loss"]


@pytest.mark.slow
def test_multi_fidelity_beats_high_labels_alone(committee_paths, dataset, tmp_path):
    """Held-out IPEA1 frames: the two-head member (dense GFN1, then ~10 % IPEA1 in a warm
    start) predicts them better on its high head than a one-head model trained on the
    same IPEA1 labels alone for as many optimiser steps, and better than its own low head."""
    test_high = label(dataset["test"], HIGH)
    assert len(test_high) >= 10
    n_high = len(dataset["high"])
    batch = TrainSettings().batch_size
    steps = EPOCHS * int(np.ceil(64 / batch)) + WARM_EPOCHS * int(np.ceil((80 + n_high) / batch))
    single_config = ModelConfig(elements=("Si", "C"), charges=CHARGES, heads=("high",), num_channels=16, r_max=4.0, radial_MLP=(32, 32))
    single = tmp_path / "high-only.model"
    train_member({"high": dataset["high"]}, single_config, seed=0, epochs=steps // int(np.ceil(n_high / batch)), out_path=single)
    member = Committee.load(committee_paths[:1])
    multi = evaluate(member, {"high": test_high})["per_head"]["high"]
    alone = evaluate(Committee.load([single]), {"high": test_high})["per_head"]["high"]
    as_low = evaluate(member, {"low": test_high})["per_head"]["low"]  # the low head against IPEA1 labels
    assert multi["force_rmse_eV_A"] < alone["force_rmse_eV_A"], (multi, alone)
    assert multi["energy_rmse_eV"] < alone["energy_rmse_eV"], (multi, alone)
    assert multi["force_rmse_eV_A"] < as_low["force_rmse_eV_A"], (multi, as_low)


def test_spin_embedding_reads_the_multiplicity(dataset, tmp_path):
    config = ModelConfig(elements=("Si", "C"), charges=CHARGES, multiplicities=(1, 3), num_channels=16, r_max=4.0, radial_MLP=(32, 32))
    assert config.multiplicity_range == (1, 4)
    path = tmp_path / "spin.model"
    train_member({"low": dataset["low"][:8]}, config, seed=0, epochs=1, out_path=path)
    committee = Committee.load([path])
    singlet = dataset["test"][0]
    triplet = singlet.copy()
    triplet.info[SPIN_KEY] = 3
    e1, e3 = (p.energy_mean_eV for p in committee.predict([singlet, triplet], "low"))
    assert e1 != pytest.approx(e3, abs=1e-4)
    no_spin = singlet.copy()
    del no_spin.info[SPIN_KEY]
    with pytest.raises(KeyError, match="total_spin.*multiplicity"):
        committee.predict([no_spin], "low")
    triplet.info[SPIN_KEY] = 5
    with pytest.raises(ValueError, match=r"total_spin.*outside.*1\.\.4"):
        committee.predict([triplet], "low")


def test_dask_worker_malloc_setting_is_undone(monkeypatch):
    """Dask workers start with MALLOC_TRIM_THRESHOLD_=65536, which halved training speed."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert undo_worker_malloc_trim() is False
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert undo_worker_malloc_trim() is True


@pytest.mark.slow
def test_train_member_runs_as_a_dask_task_in_a_worker_process(dataset, tmp_path):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        future = client.submit(
            train_member, {"low": dataset["low"][:8], "high": dataset["high"][:2]}, CONFIG, 7, 1, tmp_path / "member-0.model",
            pure=False,
        )
        report = future.result()
    assert report.start == "fresh" and report.n_train == {"low": 8, "high": 2}
    (pred,) = Committee.load([tmp_path / "member-0.model"]).predict(dataset["test"][:1], "high")
    assert np.isfinite(pred.energy_mean_eV)


def test_frames_near_each_minimum_carry_more_loss_weight(dataset):
    frames = [a.copy() for a in dataset["low"]]
    for a, b in zip(frames, dataset["low"]):
        a.info, a.arrays[REF_FORCES_KEY] = dict(b.info), b.arrays[REF_FORCES_KEY]
    emphasize_minima(frames, weight=20.0, window_eV=0.1)
    for charge in CHARGES:
        group = [a for a in frames if a.info[CHARGE_KEY] == charge]
        energies = np.array([a.info[REF_ENERGY_KEY] for a in group])
        weights = np.array([a.info[LOSS_WEIGHT_KEY] for a in group])
        assert weights[energies.argmin()] == pytest.approx(21.0)  # each charge state has its own minimum
        assert np.allclose(weights, 1 + 20 * np.exp(-(energies - energies.min()) / 0.1))
        assert (np.diff(weights[np.argsort(energies)]) <= 1e-12).all()


@pytest.mark.parametrize("sample_by_weight", [False, True], ids=["weighted-loss", "weighted-draws"])
def test_loss_weight_spends_the_fit_on_the_weighted_frames(generations, dataset, tmp_path, sample_by_weight):
    """Warm-started from the same member on the same data with the same seed (so ignored
    weights would give identical errors), the member whose loss weights four frames 1000×
    fits those frames' forces better than the unweighted one (measured: 0.164 against
    0.196 eV/Å; the tiny model's floor on these rattled frames limits the gain), whether
    the weight scales each frame's loss or how often it is drawn."""
    focus = (0, 1, 32, 33)  # two frames of each charge state
    weighted = []
    for i, a in enumerate(dataset["low"]):
        copy = a.copy()
        copy.info = {**a.info, LOSS_WEIGHT_KEY: 1000.0 if i in focus else 1.0}
        copy.arrays[REF_FORCES_KEY] = a.arrays[REF_FORCES_KEY]
        weighted.append(copy)
    reference = [dataset["low"][i] for i in focus]
    isolated = TrainSettings(hot_force_eV_A=None, ema_decay=None, sample_by_weight=sample_by_weight)
    errors = {}
    for name, frames in (("plain", dataset["low"]), ("weighted", weighted)):
        path = tmp_path / f"{name}.model"
        train_member({"low": frames, "high": []}, CONFIG, seed=0, epochs=3 * WARM_EPOCHS, out_path=path,
                     init_from=generations["gen0"][0], settings=isolated)
        predictions = Committee.load([path]).predict(reference, "low")
        errors[name] = float(np.sqrt(np.mean([(p.forces_mean_eV_A - a.arrays[REF_FORCES_KEY]) ** 2
                                              for p, a in zip(predictions, reference)])))
    assert errors["weighted"] < 0.9 * errors["plain"], errors


def test_training_and_inference_use_the_gpu_where_torch_sees_one(monkeypatch):
    import torch

    from activedefect.model.config import TrainSettings
    from activedefect.model.mace_model import resolve_device

    assert TrainSettings().device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"


def test_hot_frames_weigh_less_the_harder_they_push():
    """A frame's weight falls as 1/(1 + (F_rms/hot_force)^2): a distorted seed at 10 eV/Å
    weighs 1 %, a frame near a minimum almost 1; None leaves every frame at 1."""
    from activedefect.model.member_training import _hot_force_factor

    def frame(force: float) -> Atoms:
        atoms = host()
        atoms.arrays[REF_FORCES_KEY] = np.full((len(atoms), 3), force)
        return atoms

    assert _hot_force_factor(frame(10.0), 1.0) == pytest.approx(1 / 101)
    assert _hot_force_factor(frame(0.05), 1.0) == pytest.approx(1 / 1.0025)
    assert _hot_force_factor(frame(-2.0), 2.0) == pytest.approx(0.5)
    assert _hot_force_factor(frame(10.0), None) == 1.0


def test_a_sparse_head_joins_after_the_dense_one_with_its_own_e0s(dataset, tmp_path):
    """Fresh training with ``sparse_head_ratio``: `high` (≈ 6 labels beside 64 `low`) starts
    from `low`'s readout but keeps the E0s fitted to its own labels, and ends predicting
    its own fidelity, not `low`'s."""
    from activedefect.model.member_training import fit_e0s

    path = tmp_path / "staged.model"
    report = train_member({"low": dataset["low"], "high": dataset["high"]}, CONFIG, seed=0, epochs=8,
                          out_path=path, settings=TrainSettings(sparse_head_ratio=5.0))
    assert report.fitted_heads == ["low", "high"] and len(report.loss_history) == 8
    model = load_model(path, "cpu")
    e0 = model.atomic_energies_fn.atomic_energies.detach().numpy()
    assert np.allclose(e0[1], fit_e0s(dataset["high"], CONFIG.atomic_numbers), atol=1e-3)
    assert not np.allclose(e0[0], e0[1], atol=1e-3)
    member = Committee.load([path])
    on_high = [p.energy_mean_eV for p in member.predict(dataset["high"], "high")]
    on_low = [p.energy_mean_eV for p in member.predict(dataset["high"], "low")]
    ref = [a.info[REF_ENERGY_KEY] for a in dataset["high"]]
    assert np.abs(np.subtract(on_high, ref)).mean() < np.abs(np.subtract(on_low, ref)).mean()


def test_training_thins_oracle_relaxations_from_seeds_but_keeps_committee_frames(tmp_path):
    """Through a real store: a `low` relaxation of a seed (8 steps) trains on steps 0, 3, 6,
    its last (7) and its lowest (5); frames of a committee trajectory and an imported frame
    all stay."""
    from activedefect.labels import LabelResult
    from activedefect.model.training import training_data
    from activedefect.store.zarr_store import Store

    frames = geometries(12, seed=5)
    origins = ([{"seed": "A", "generation": 0, "step": k} for k in range(8)]
               + [{"seed": "A", "generation": 1, "trajectory": 0, "step": k} for k in (5, 10, 15)] + [None])
    for atoms, origin in zip(frames, origins):
        atoms.info.update({CHARGE_KEY: 0, SPIN_KEY: 1, "defect": "v_Si"})
        if origin is not None:
            atoms.info["origin"] = origin
    store = Store.open(tmp_path / "data.zarr")
    indices = store.add_frames(frames)
    energies = [-float(i) for i in indices]
    energies[5] = -100.0  # the lowest step of the relaxation (not a multiple of 3, not its last) stays too
    store.add_labels("low", [(i, LabelResult("ok", "h", energy_eV=e, forces_eV_A=np.zeros((len(a), 3))))
                             for i, a, e in zip(indices, frames, energies)])

    def trained_steps(stride: int) -> list:
        train, valid = training_data(store, {"low": "h", "high": "h"}, 0.0, trajectory_stride=stride)
        assert valid["low"] == [] and train["high"] == []
        return sorted((((a.info.get("origin") or {}).get("trajectory"), (a.info.get("origin") or {}).get("step"))
                       for a in train["low"]), key=str)

    assert len(trained_steps(1)) == 12
    assert trained_steps(3) == sorted([(None, 0), (None, 3), (None, 5), (None, 6), (None, 7), (0, 5), (0, 10),
                                       (0, 15), (None, None)], key=str)
    store.close()
