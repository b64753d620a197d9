"""Transition levels and formation energies from known energies."""

import numpy as np
import pytest

from activedefect.results import levels


def test_level_from_known_energies():
    # eps(0/-1) = (E0 - E-1) / (-1 - 0) - VBM = (-100 + 98.5) / -1 - 1.0
    assert levels.transition_level(-100.0, 0, -98.5, -1, vbm_eV=1.0) == pytest.approx(0.5)
    # a correction of 0.2 eV on the -1 state raises it by 0.2 eV
    assert levels.transition_level(-100.0, 0, -98.5, -1, 1.0, 0.0, 0.2) == pytest.approx(0.7)
    # (+1/0): charge q = +1 against q' = 0
    assert levels.transition_level(-10.0, 1, -12.0, 0, vbm_eV=-5.0) == pytest.approx(3.0)  # 2 / -1 + 5


def test_same_charge_is_refused():
    with pytest.raises(ValueError, match="two different charges"):
        levels.transition_level(0.0, -1, 1.0, -1, 0.0)


def test_formation_energies_cross_at_the_level():
    energies = {0: -100.0, -1: -98.5, -2: -96.0}
    found = levels.adjacent_levels("v_X", energies, vbm_eV=1.0, corrections_eV={-2: 0.3})
    assert [lv.label for lv in found] == ["(0/-1)", "(-1/-2)"]
    for level in found:
        a = levels.formation_energy(energies[level.charge], level.charge, level.level_eV, 1.0, 0.0,
                                    {-2: 0.3}.get(level.charge, 0.0))
        b = levels.formation_energy(energies[level.charge_prime], level.charge_prime, level.level_eV, 1.0, 0.0,
                                    {-2: 0.3}.get(level.charge_prime, 0.0))
        assert a == pytest.approx(b)


def test_negative_u_state_is_skipped_by_the_envelope():
    # eps(0/-1) = 1.0 lies above eps(-1/-2) = 0.6: -1 is never most stable; (0/-2) at 0.8
    energies = {0: 0.0, -1: 1.0, -2: 1.6}
    adjacent = {lv.label: lv.level_eV for lv in levels.adjacent_levels("v_X", energies, 0.0)}
    assert adjacent == pytest.approx({"(0/-1)": 1.0, "(-1/-2)": 0.6})
    stable = levels.stable_levels("v_X", energies, 0.0, (0.0, 2.0))
    assert [(lv.label, round(lv.level_eV, 9)) for lv in stable] == [("(0/-2)", 0.8)]
    fermi = np.array([0.5, 0.79, 0.81, 1.5])
    assert levels.stable_charges(energies, fermi, 0.0).tolist() == [0, 0, -2, -2]


def test_levels_outside_the_window_are_not_crossed():
    energies = {0: 0.0, -1: 1.0, -2: 3.0}  # eps(0/-1) = 1.0, eps(-1/-2) = 2.0
    assert [lv.label for lv in levels.stable_levels("v_X", energies, 0.0, (0.0, 1.5))] == ["(0/-1)"]
    assert [lv.label for lv in levels.stable_levels("v_X", energies, 0.0, (0.0, 3.0))] == ["(0/-1)", "(-1/-2)"]
    assert levels.stable_levels("v_X", energies, 0.0, (1.2, 1.8)) == []
