"""Which `low` minima the confirm step relaxes besides the committee's candidate."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY
from activedefect.labels import LabelResult
from activedefect.search.screening import distinct_low_minima, lineage_minima
from activedefect.store.zarr_store import Store

SH = "low-settings"


def frame(shift_A: float, seed: str, charge: int = 0) -> Atoms:
    """Two-atom stand-in for a defect cell; ``shift_A`` moves the second atom along x."""
    atoms = Atoms("Si2", positions=[[0, 0, 0], [2.0 + shift_A, 0, 0]], cell=[8, 8, 8], pbc=True)
    atoms.info.update({CHARGE_KEY: charge, SPIN_KEY: 1, DEFECT_KEY: "v_X",
                       "origin": {"seed": seed, "generation": 0, "trajectory": 0, "step": 0}})
    return atoms


def ok(energy_eV: float, settings_hash: str = SH) -> LabelResult:
    return LabelResult("ok", settings_hash, energy_eV, np.zeros((2, 3)))


def test_lowest_frame_of_each_lineage_lowest_first_and_distinct(tmp_path):
    # seed A: -1.0 then -3.0 (its minimum); B: -2.0 far from A; C: -2.5 within 0.01 Å of
    # A's minimum (the same structure); D: only a failed and an other-settings label
    specs = [(0.0, "A", -1.0), (0.5, "A", -3.0), (1.5, "B", -2.0), (0.51, "C", -2.5),
             (0.9, "A", -9.0, "other"), (1.0, "D", None), (0.5, "A", -4.0, SH, -1)]
    with Store.open(tmp_path / "s.zarr", mode="a") as store:
        frames = store.add_frames([frame(s[0], s[1], s[4] if len(s) > 4 else 0) for s in specs])
        for index, s in zip(frames, specs):
            label = LabelResult.failure("scf_not_converged", SH, "no") if s[2] is None else ok(s[2], s[3] if len(s) > 3 else SH)
            store.add_labels("low", [(index, label)])
        minima = lineage_minima(store, SH)
        assert set(minima) == {("v_X", 0), ("v_X", -1)}
        assert [(m.seed, m.low_energy_eV) for m in minima[("v_X", 0)]] == [("A", -3.0), ("C", -2.5), ("B", -2.0)]
        assert [m.frame for m in minima[("v_X", -1)]] == [frames[6]]

        picked = distinct_low_minima(store, minima[("v_X", 0)], 2)
        assert [m.seed for m in picked] == ["A", "B"], "C is A's structure again"
        assert [m.seed for m in distinct_low_minima(store, minima[("v_X", 0)], 1)] == ["A"]
        # the committee's candidate sits on A's minimum: A and C are skipped
        assert [m.seed for m in distinct_low_minima(store, minima[("v_X", 0)], 2, exclude_frames=[frames[1]])] == ["B"]
        assert distinct_low_minima(store, minima[("v_X", 0)], 0) == []


def test_a_permuted_copy_of_equal_low_energy_is_one_structure(tmp_path):
    """The same distortion around another neighbour: atoms in another order, same energy."""
    with Store.open(tmp_path / "s.zarr", mode="a") as store:
        b = frame(1.5, "B")
        swapped = Atoms("Si2", positions=b.positions[::-1], cell=b.cell, pbc=True, info=dict(b.info))
        swapped.info["origin"] = {**b.info["origin"], "seed": "E"}
        far = Atoms("Si2", positions=b.positions[::-1] + [[0.002, 0, 0], [0, 0, 0]], cell=b.cell, pbc=True,
                    info=dict(b.info))
        far.info["origin"] = {**b.info["origin"], "seed": "F", "step": 1}
        frames = store.add_frames([b, swapped, far])
        store.add_labels("low", [(frames[0], ok(-2.000)), (frames[1], ok(-1.999)), (frames[2], ok(-1.900))])
        minima = lineage_minima(store, SH)[("v_X", 0)]
        assert [m.seed for m in minima] == ["B", "E", "F"]
        # E is B within 1 meV; F is nearly the same geometry 100 meV apart: kept
        assert [m.seed for m in distinct_low_minima(store, minima, 3)] == ["B", "F"]
