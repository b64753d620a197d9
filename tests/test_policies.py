"""Selection policies on plain tables: trust window, strata, bootstrap, budget, presets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from ase import Atoms

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY, content_hash
from activedefect.search.basins import Basin
from activedefect.search.candidates import (
    candidate_table,
    farthest_point_order,
    mean_pooled,
)
from activedefect.search.policies import load_policy, preset_names
from activedefect.search.policy_framework import (
    LabelRequest,
    SelectionContext,
    policy_kinds,
    register_policy,
    select,
)
from activedefect.search.relaxation import CONVERGED, CUT_UNTRUSTED, Frame, RelaxResult


def structure(i: int, charge: int = 0, defect: str = "v_X") -> Atoms:
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.5 + 0.01 * i, 0, 0]], cell=[6, 6, 6], pbc=True)
    atoms.info.update({CHARGE_KEY: charge, SPIN_KEY: 1, DEFECT_KEY: defect})
    return atoms


def label_table(frames, energies=None, status="ok", settings_hash="s") -> pd.DataFrame:
    frames = list(frames)
    energies = energies if energies is not None else [0.0] * len(frames)
    return pd.DataFrame({"frame": frames, "energy_eV": energies, "status": status, "settings_hash": settings_hash})


# ----------------------------------------------------------------------------- uncertainty


def spread_candidates(spreads, cut=None, frames=None) -> pd.DataFrame:
    n = len(spreads)
    return pd.DataFrame(
        {
            "frame": frames if frames is not None else list(range(n)),
            "hash": [content_hash(structure(i)) for i in range(n)],
            "defect": "v_X",
            "charge": 0,
            "max_force_std_eV_A": spreads,
            "cut": cut if cut is not None else [False] * n,
        }
    )


def test_uncertainty_picks_largest_spreads_in_the_window():
    policy = load_policy("committee-uncertainty")
    assert (policy.params["trust_lo"], policy.params["trust_hi"]) == (0.05, 0.30)
    spreads = [0.01, 0.06, 0.29, 0.5, 0.12, 0.2, 0.04, 0.31, 0.08]
    # frame 7 is where a relaxation was cut; frame 3 (0.5, uncut) one a relaxation followed
    # above trust_hi because its forces were large (exploration.trust_relative)
    cut = [False] * 7 + [True, False]
    ctx = SelectionContext(budget_left={"low": 100, "high": 10}, candidates=spread_candidates(spreads, cut))
    result = policy.select(ctx)
    assert [r.frame for r in result.requests] == [3, 7, 2, 5, 4, 8, 1]  # 0.01 and 0.04 below trust_lo
    assert all(r.fidelity == "low" and r.policy == "committee-uncertainty" for r in result.requests)
    assert "large forces" in result.requests[0].reason and result.requests[1].reason.startswith("cut")
    assert result.budget_exhausted == {"low": False, "high": False}

    few = load_policy({"kind": "uncertainty", "per_generation": 3, "include_cut": False})
    assert [r.frame for r in few.select(ctx).requests] == [3, 2, 5]


def test_uncertainty_respects_budget_and_says_when_spent():
    spreads = list(np.linspace(0.06, 0.29, 10))
    ctx = SelectionContext(budget_left={"low": 4, "high": 0}, candidates=spread_candidates(spreads))
    result = load_policy("committee-uncertainty").select(ctx)
    assert [r.frame for r in result.requests] == [9, 8, 7, 6]
    assert result.budget_exhausted["low"] and result.dropped["low"] == 6
    empty = load_policy("committee-uncertainty").select(
        SelectionContext(budget_left={"low": 0, "high": 5}, candidates=spread_candidates(spreads))
    )
    assert empty.requests == [] and empty.budget_exhausted == {"low": True, "high": False}


def test_uncertainty_relaxes_from_cut_frames_with_the_oracle_when_asked():
    cand = spread_candidates([0.1, 0.9, 0.2], cut=[False, True, False])
    plain = load_policy({"kind": "uncertainty"}).select(SelectionContext(budget_left={"low": 50}, candidates=cand))
    assert all(r.relax_steps == 0 for r in plain.requests)
    policy = load_policy({"kind": "uncertainty", "cut_relax_steps": 4, "cut_relax_fmax_eV_A": 0.1})
    result = policy.select(SelectionContext(budget_left={"low": 50}, candidates=cand))
    by_frame = {r.frame: r for r in result.requests}
    assert (by_frame[1].relax_steps, by_frame[1].relax_fmax_eV_A) == (4, 0.1)
    assert by_frame[0].relax_steps == by_frame[2].relax_steps == 0
    assert result.calls("low") == 5 + 1 + 1
    with pytest.raises(ValueError, match="cut_relax_steps"):
        load_policy({"kind": "uncertainty", "cut_relax_steps": -1})



def test_uncertainty_labels_each_frame_at_the_head_that_was_uncertain_when_asked():
    cand = spread_candidates([0.9, 0.8, 0.1, 0.7], cut=[True, True, False, False])
    cand["head"] = ["low", "high", "high", ""]  # "": not recorded, the final head (high)
    policy = load_policy({"kind": "uncertainty", "fidelity": "head", "cut_relax_steps": 3})
    # frame 3 is labelled at high already, frame 1 at low: each asked at the other fidelity only
    labels = {"low": label_table([1], settings_hash=["s"]), "high": label_table([3], settings_hash=["s"])}
    ctx = SelectionContext(budget_left={"low": 50, "high": 50}, candidates=cand, labels=labels,
                           settings_hashes={"low": "s", "high": "s"})
    result = policy.select(ctx)
    assert [(r.frame, r.fidelity, r.relax_steps) for r in result.requests] == [(0, "low", 3), (1, "high", 3),
                                                                                 (2, "high", 0)]
    plain = load_policy({"kind": "uncertainty"}).select(ctx)
    assert [(r.frame, r.fidelity) for r in plain.requests] == [(0, "low"), (3, "low"), (2, "low")]
    with pytest.raises(ValueError, match="fidelity must be one of"):
        load_policy({"kind": "uncertainty", "fidelity": "medium"})


def test_uncertainty_skips_labelled_frames_by_index_and_hash():
    spreads = [0.1, 0.2, 0.25]
    cand = spread_candidates(spreads, frames=[-1, 5, -1])
    atoms = [structure(i) for i in range(3)]
    frames = pd.DataFrame({"frame": [5, 9], "hash": [content_hash(structure(1)), content_hash(structure(2))]})
    ctx = SelectionContext(
        budget_left={"low": 10},
        candidates=cand,
        atoms=atoms,
        frames=frames,
        labels={"low": label_table([9, 5], settings_hash=["s", "old"])},
        settings_hashes={"low": "s"},
    )
    # frame 9 (same structure as row 2) is labelled under the current settings; frame 5's
    # label was made with other settings and does not count
    requests = load_policy("committee-uncertainty").select(ctx).requests
    assert [(r.frame, r.atoms is atoms[i]) for r, i in zip(requests, [1, 0])] == [(5, True), (None, True)]


def test_uncertainty_diversifies_by_farthest_point_sampling():
    spreads = [0.25, 0.24, 0.23, 0.1]
    descriptors = np.array([[0.0, 0.0], [0.0, 0.001], [0.0, 0.002], [5.0, 5.0]])  # rows 0-2: near duplicates
    ctx = SelectionContext(budget_left={"low": 10}, candidates=spread_candidates(spreads), descriptors=descriptors)
    policy = load_policy({"kind": "uncertainty", "per_generation": 2})
    assert [r.frame for r in policy.select(ctx).requests] == [0, 3]
    exact = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert farthest_point_order(exact, 0, 4) == [0, 2]  # exact duplicates are never taken twice
    assert mean_pooled([np.ones((3, 2)), np.arange(4.0).reshape(2, 2)]).tolist() == [[1.0, 1.0], [1.0, 2.0]]


# ----------------------------------------------------------------------------- stratified


def store_tables(states, n_per_state, high_frames=()):
    """Frame table and low labels for frames of several defect × charge states."""
    rows, energies = [], []
    rng = np.random.default_rng(0)
    for defect, charge in states:
        for i in range(n_per_state):
            frame = len(rows)
            rows.append({"frame": frame, "hash": f"h{frame}", "defect": defect, "charge": charge, "basin": i % 2})
            energies.append(float(rng.normal()))
    frames = pd.DataFrame(rows)
    labels = {"low": label_table(frames["frame"], energies), "high": label_table(high_frames)}
    return frames, labels


def ground_state(defect, charge, frame=None, shift=0.0) -> Basin:
    atoms = structure(int(shift * 100), charge, defect)
    return Basin(defect, charge, 0, -1.0, 0.01, 0.02, atoms, frame=frame)


def test_stratified_covers_every_charge_state_and_every_ground_state():
    states = [("v_X", -1), ("v_X", 0), ("v_X", 1), ("X_i", 0)]
    frames, labels = store_tables(states, 20, high_frames=[0, 1])  # v_X -1 already has high labels
    gs = [ground_state(d, q, shift=0.1 * k) for k, (d, q) in enumerate(states)]
    gs[0].frame = 0  # already labelled at high: not requested again
    ctx = SelectionContext(budget_left={"low": 0, "high": 100}, frames=frames, labels=labels, basins=gs, seed=3)
    policy = load_policy({"kind": "stratified"})  # the kind's defaults: 10 %, single points
    requests = policy.select(ctx).requests
    first = requests[:3]
    assert all(r.fidelity == "high" and "ground-state" in r.reason for r in first)
    assert [r.atoms for r in first] == [g.atoms for g in gs[1:]]
    rest = requests[3:]
    picked = frames.set_index("frame").loc[[r.frame for r in rest]]
    assert set(zip(picked["defect"], picked["charge"])) == set(states)
    # high labels reach 10 % of the 80 low-labelled frames: 8 in all, 2 were there
    assert len(rest) == math.ceil(0.1 * 80) - 2
    assert not set(r.frame for r in rest) & {0, 1}
    again = policy.select(ctx).requests
    assert [r.frame for r in again] == [r.frame for r in requests]  # seeded
    assert all(r.relax_steps == 0 for r in requests)
    relaxing = load_policy({"kind": "stratified", "ground_state_relax_steps": 3}).select(ctx).requests
    assert [(r.relax_steps, r.relax_fmax_eV_A) for r in relaxing[:3]] == [(3, 0.01)] * 3  # the candidates
    assert all(r.relax_steps == 0 for r in relaxing[3:])  # the stratified top-up stays single points
    with pytest.raises(ValueError, match="ground_state_relax_steps"):
        load_policy({"kind": "stratified", "ground_state_relax_steps": -1})


def test_stratified_relaxes_the_lowest_frame_of_a_charge_state_without_ground_state():
    states = [("v_X", -1), ("v_X", 0)]
    frames, labels = store_tables(states, 10)
    gs = [ground_state("v_X", 0)]  # v_X -1: every committee relaxation was cut
    ctx = SelectionContext(budget_left={"low": 0, "high": 100}, frames=frames, labels=labels, basins=gs, seed=3)
    requests = load_policy({"kind": "stratified", "ground_state_relax_steps": 3}).select(ctx).requests
    low = labels["low"].merge(frames, on="frame")
    lowest = int(low.loc[low[low["charge"] == -1]["energy_eV"].idxmin(), "frame"])
    relaxations = [r for r in requests if r.relax_steps]
    assert [(r.frame, r.relax_steps) for r in relaxations[1:]] == [(lowest, 3)]
    assert relaxations[0].atoms is gs[0].atoms  # the candidate of v_X 0 is relaxed too
    assert "no ground-state candidate" in relaxations[1].reason
    single_points = load_policy({"kind": "stratified"}).select(ctx).requests  # without relaxations: nothing of this
    assert not any(r.relax_steps for r in single_points)


def test_stratified_labels_the_lowest_basins_of_each_state_with_basins_per_state():
    """The committee's second-lowest minimum is where `high` may order the basins otherwise
    than `low` (the paper's distorted v_Si^-2): with basins_per_state 2 it gets a `high`
    relaxation too; the third basin and the default (1) do not."""
    states = [("v_X", -2), ("v_X", 0)]
    frames, labels = store_tables(states, 10)
    basins = [Basin(d, q, rank, -1.0 + rank, 0.01, 0.02, structure(10 * k + rank, q, d))
              for k, (d, q) in enumerate(states) for rank in range(3)]
    ctx = SelectionContext(budget_left={"low": 0, "high": 100}, frames=frames, labels=labels, basins=basins, seed=3)
    default = load_policy({"kind": "stratified", "ground_state_relax_steps": 3}).select(ctx).requests
    assert [r.atoms for r in default if r.relax_steps] == [b.atoms for b in basins if b.rank == 0]
    two = load_policy({"kind": "stratified", "ground_state_relax_steps": 3, "basins_per_state": 2}).select(ctx).requests
    relaxed = [r for r in two if r.relax_steps]
    # every ground-state candidate first, then the second basins: a tight budget cuts the latter
    assert [r.atoms for r in relaxed] == [b.atoms for rank in (0, 1) for b in basins if b.rank == rank]
    assert [r.reason for r in relaxed] == ["ground-state candidate of v_X charge -2", "ground-state candidate of v_X "
                                           "charge +0", "basin 1 minimum of v_X charge -2", "basin 1 minimum of v_X "
                                           "charge +0"]
    assert ctx.ground_states == [b for b in basins if b.rank == 0]
    with pytest.raises(ValueError, match="basins_per_state"):
        load_policy({"kind": "stratified", "basins_per_state": 0})


def test_stratified_spreads_over_energy_quantiles():
    frames, labels = store_tables([("v_X", 0)], 40)
    frames = frames.drop(columns="basin")
    labels["low"]["energy_eV"] = np.arange(40.0)
    policy = load_policy({"kind": "stratified", "include_ground_states": False})
    ctx = SelectionContext(budget_left={"high": 100}, frames=frames, labels=labels)
    picked = sorted(r.frame for r in policy.select(ctx).requests)
    assert len(picked) == 4
    assert [p // 10 for p in picked] == [0, 1, 2, 3]  # one per energy quartile


def test_stratified_respects_budget_ground_states_first():
    states = [("v_X", q) for q in (-2, -1, 0, 1, 2)]
    frames, labels = store_tables(states, 10)
    gs = [ground_state(d, q, shift=0.1 * k) for k, (d, q) in enumerate(states)]
    ctx = SelectionContext(budget_left={"high": 3}, frames=frames, labels=labels, basins=gs)
    result = load_policy({"kind": "stratified"}).select(ctx)
    assert len(result.requests) == 3 and all("ground-state" in r.reason for r in result.requests)
    assert result.budget_exhausted["high"] and result.dropped["high"] == 2 + 5


def test_oracle_relaxations_count_every_call_they_may_make_against_the_budget():
    states = [("v_X", q) for q in (-1, 0)]
    frames, labels = store_tables(states, 10)
    gs = [ground_state(d, q, shift=0.1 * k) for k, (d, q) in enumerate(states)]
    policy = load_policy({"kind": "stratified", "ground_state_relax_steps": 3, "fraction": 0.5})
    result = policy.select(SelectionContext(budget_left={"high": 7}, frames=frames, labels=labels, basins=gs))
    relaxations = [r for r in result.requests if r.relax_steps]
    assert len(relaxations) == 1 and relaxations[0].max_calls == 4  # the start and 3 steps
    assert result.calls("high") == 4 + 3 and len(result.requests) == 4  # then 3 single points
    assert result.budget_exhausted["high"] and result.dropped["high"] >= 1


def test_stratified_skips_failed_low_labels_and_counts_failed_high_ones():
    frames, labels = store_tables([("v_X", 0)], 10)
    labels["low"].loc[labels["low"]["frame"] < 5, "status"] = "scf_not_converged"
    labels["high"] = label_table([7], status="crashed")
    ctx = SelectionContext(budget_left={"high": 10}, frames=frames, labels=labels)
    requests = load_policy({"kind": "stratified", "fraction": 1.0}).select(ctx).requests
    assert sorted(r.frame for r in requests) == [5, 6, 8, 9]


# ----------------------------------------------------------------------------- bootstrap


def seed_candidates():
    rows = []
    for defect in ("v_X", "X_i"):
        for charge in (-1, 0, 1):
            for name in ["Unperturbed", *(f"Bond_Distortion_{d}.0%" for d in range(-60, 70, 10)), "Rattled"]:
                rows.append({"frame": len(rows), "defect": defect, "charge": charge, "seed": name})
    return pd.DataFrame(rows)


def test_bootstrap_labels_all_seeds_low_and_unperturbed_plus_fraction_high():
    cand = seed_candidates()  # 2 defects x 3 charges x 15 seeds = 90
    policy = load_policy("bootstrap")  # the preset: ShakeNBreak's screen, every seed relaxed at `low`
    assert policy.phase == "bootstrap"
    result = policy.select(SelectionContext(budget_left={"low": 90 * 151, "high": 1000}, candidates=cand))
    low = [r for r in result.requests if r.fidelity == "low"]
    high = [r for r in result.requests if r.fidelity == "high"]
    assert sorted(r.frame for r in low) == list(range(90))
    assert all(r.relax_steps == 150 and r.relax_fmax_eV_A == 0.02 for r in low)
    assert len(high) == 9  # ceil(10 % of 90)
    picked = cand.set_index("frame").loc[[r.frame for r in high]]
    unperturbed = picked[picked["seed"] == "Unperturbed"]
    assert len(unperturbed) == 6 and set(zip(unperturbed["defect"], unperturbed["charge"])) == set(
        zip(cand["defect"], cand["charge"])
    )
    relaxing = load_policy({"kind": "bootstrap", "low_relax_steps": 20, "high_fraction": 0.0})
    # a 20-step relaxation may make 21 calls: a budget of 12 x 21 + 20 holds 12 of them
    result = relaxing.select(SelectionContext(budget_left={"low": 12 * 21 + 20, "high": 100}, candidates=cand))
    low = [r for r in result.requests if r.fidelity == "low"]
    assert len(low) == 12 and all(r.relax_steps == 20 and r.relax_fmax_eV_A == 0.05 for r in low)
    assert [cand.loc[r.frame, "seed"] for r in low[:6]] == ["Unperturbed"] * 6  # first when budget is short
    assert not result.budget_exhausted["low"] and result.dropped["low"] == 90 - 12
    assert sum(r.fidelity == "high" for r in result.requests) == 6  # Unperturbed always


# ----------------------------------------------------------------------------- combining, presets


def test_select_runs_phase_policies_in_order_within_one_budget():
    spreads = [0.1, 0.2, 0.25]
    frames, labels = store_tables([("v_X", 0)], 10)
    ctx = SelectionContext(
        budget_left={"low": 2, "high": 1}, candidates=spread_candidates(spreads, frames=[100, 101, 102]),
        frames=frames, labels=labels, basins=[ground_state("v_X", 0)],
    )
    policies = [load_policy(n) for n in ("bootstrap", "committee-uncertainty", "stratified-high")]
    result = select(policies, ctx, phase="select")
    assert [(r.fidelity, r.policy) for r in result.requests] == [
        ("low", "committee-uncertainty"), ("low", "committee-uncertainty"), ("high", "stratified-high"),
    ]
    assert result.budget_exhausted == {"low": True, "high": True}
    assert result.dropped == {"low": 1, "high": 1}
    twice = select([load_policy("committee-uncertainty"), load_policy({"kind": "uncertainty", "name": "again"})],
                   ctx, phase="select")
    assert len(twice.requests) == 2  # the same frame is not requested twice


def test_load_policy_by_name_path_and_inline(tmp_path):
    assert set(preset_names()) >= {"committee-uncertainty", "stratified-high", "bootstrap"}
    path = tmp_path / "mine.yaml"
    path.write_text("kind: uncertainty\ntrust_lo: 0.1\ntrust_hi: 0.4\n")
    from_path = load_policy(str(path))
    assert from_path.name == "mine" and from_path.params["trust_hi"] == 0.4 and from_path.params["per_generation"] == 50
    assert load_policy("mine.yaml", base_dir=tmp_path).params == from_path.params
    inline = load_policy({"kind": "stratified", "fraction": 0.2, "name": "twenty"})
    assert (inline.name, inline.params["fraction"]) == ("twenty", 0.2)
    assert inline.as_dict()["kind"] == "stratified"
    with pytest.raises(ValueError, match="unknown policy preset 'nope'.*committee-uncertainty"):
        load_policy("nope")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['trust_low'\].*trust_lo"):
        load_policy({"kind": "uncertainty", "trust_low": 0.1})
    with pytest.raises(ValueError, match=r"got 'magic'; kinds .*uncertainty \(trust_lo=0\.05"):
        load_policy({"kind": "magic"})
    with pytest.raises(ValueError, match="trust_lo < trust_hi"):
        load_policy({"kind": "uncertainty", "trust_lo": 0.5, "trust_hi": 0.3})
    with pytest.raises(ValueError, match="fraction"):
        load_policy({"kind": "stratified", "fraction": 0})
    with pytest.raises(ValueError, match="does not exist"):
        load_policy(tmp_path / "missing.yaml")


def test_a_new_policy_is_a_function_and_a_preset(tmp_path, monkeypatch):
    from activedefect.search import policy_framework

    monkeypatch.setattr(policy_framework, "_KINDS", dict(policy_framework._KINDS))  # keep the registry clean

    @register_policy("lowest-energy")
    def lowest_energy(ctx, *, policy, n=1, fidelity="high"):
        order = ctx.candidates["energy_eV"].argsort().to_numpy()[:n]
        return [ctx.request(int(i), fidelity, policy, "lowest predicted energy") for i in order]

    assert policy_kinds()["lowest-energy"] == {"n": 1, "fidelity": "high"}
    (tmp_path / "lowest.yaml").write_text("kind: lowest-energy\nn: 2\n")
    cand = pd.DataFrame({"frame": [0, 1, 2], "defect": "v_X", "charge": 0, "energy_eV": [3.0, 1.0, 2.0]})
    result = load_policy(tmp_path / "lowest.yaml").select(SelectionContext(budget_left={"high": 5}, candidates=cand))
    assert [r.frame for r in result.requests] == [1, 2]
    with pytest.raises(ValueError, match="store frame index or the atoms"):
        LabelRequest("low", "p", "r")


def test_candidate_table_from_relaxations():
    def frame(trajectory, step, spread, cut=False):
        return Frame(structure(10 * trajectory + step), step, -float(step), 0.01, spread, 0.1, cut)

    results = [
        RelaxResult("Unperturbed", "v_X", 0, 1, CONVERGED, structure(2), -2.0, 0.01, 0.02, 0.01, 2,
                    [frame(0, 0, 0.1), frame(0, 2, 0.02)]),
        RelaxResult("Rattled", "v_X", 0, 1, CUT_UNTRUSTED, structure(13), -3.0, 0.01, 0.5, 0.01, 3,
                    [frame(1, 0, 0.2), frame(1, 3, 0.5, cut=True)]),
    ]
    basins = {("v_X", 0): [Basin("v_X", 0, 0, -2.0, 0.01, 0.02, structure(2), ["Unperturbed"], [-2.0], [0])]}
    table, atoms = candidate_table(results, basins)
    assert list(table["basin"]) == [0, 0, -1, -1]
    assert list(table["cut"]) == [False, False, False, True]
    assert list(table["frame"]) == [-1] * 4 and len(atoms) == 4
    requests = load_policy({"kind": "uncertainty"}).select(  # single points: 3 calls
        SelectionContext(budget_left={"low": 10}, candidates=table, atoms=atoms)
    ).requests
    assert [r.atoms for r in requests] == [atoms[3], atoms[2], atoms[0]]
