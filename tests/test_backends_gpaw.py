"""GPAW backend: real PBE single points on a 2-atom Si cell (a few seconds)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

gpaw = pytest.importorskip("gpaw")

from ase.build import bulk  # noqa: E402

from activedefect.oracle.backends import SettingsError, get_backend  # noqa: E402

pytestmark = pytest.mark.gpaw

FAST = {"ecut": 200.0}


@pytest.fixture(scope="module")
def si2():
    atoms = bulk("Si", "diamond", 5.43)
    atoms.rattle(0.05, seed=0)
    return atoms


def test_pbe_plane_wave_neutral_and_charged(si2):
    backend = get_backend("gpaw", FAST)
    neutral = backend.calculate(si2, 0, 1)
    cation = backend.calculate(si2, 1, 2)
    for label in (neutral, cation):
        assert label.ok, label.reason
        assert label.forces_eV_A.shape == (2, 3) and np.isfinite(label.forces_eV_A).all()
        assert label.stress_eV_A3.shape == (6,)
        assert label.metadata["code"] == "gpaw" and label.metadata["version"] == gpaw.__version__
        assert label.metadata["energy_kind"] == "free_energy"
    # Periodic charged cells share no energy zero with neutral ones (compensating
    # background); the charge must simply reach the calculation.
    assert abs(cation.energy_eV - neutral.energy_eV) > 1.0
    assert np.abs(neutral.forces_eV_A.sum(axis=0)).max() < 1e-2


def test_multiplicity_fixes_the_magnetic_moment(si2):
    calc = get_backend("gpaw", FAST).calculator(0, 3)
    atoms = si2.copy()
    atoms.calc = calc
    atoms.get_potential_energy()
    assert calc.inner.get_magnetic_moment() == pytest.approx(2.0, abs=1e-3)


def test_one_calculator_follows_a_relaxation_that_breaks_the_start_symmetry():
    """The host check and oracle relaxations reuse one calculator from a symmetric start."""
    atoms = bulk("Si", "diamond", 5.43)
    atoms.calc = get_backend("gpaw", FAST).calculator(0, 1)
    atoms.get_potential_energy()
    atoms.positions[0] += [0.05, 0.02, -0.03]
    atoms.get_potential_energy()
    assert np.abs(atoms.get_forces()).max() > 0.05  # the displaced atom is pulled back


def test_lcao_mode(si2):
    label = get_backend("gpaw", {"mode": "lcao"}).calculate(si2, 0, 1)
    assert label.ok, label.reason
    assert label.stress_eV_A3 is None


def test_scf_failure_and_retry_settings(si2):
    backend = get_backend("gpaw", {**FAST, "maxiter": 3}, retries=1)
    label = backend.calculate(si2, 0, 1)
    assert label.status == "scf_not_converged" and "GPAW SCF did not converge" in label.reason
    assert label.metadata["retries"] == 1
    assert (label.metadata["settings"]["maxiter"], label.metadata["settings"]["mixer_beta"]) == (6, 0.025)


def test_gpaw_settings_and_hash():
    with pytest.raises(SettingsError, match="mode must be one of"):
        get_backend("gpaw", {"mode": "fd"})
    with pytest.raises(SettingsError, match="unknown setting 'cutoff'; accepted settings: basis, ecut"):
        get_backend("gpaw", {"cutoff": 300})
    pw = get_backend("gpaw")
    assert get_backend("gpaw", {"basis": "sz", "maxiter": 50}).settings_hash == pw.settings_hash
    assert get_backend("gpaw", {"ecut": 500.0}).settings_hash != pw.settings_hash
    lcao = get_backend("gpaw", {"mode": "lcao"})
    assert get_backend("gpaw", {"mode": "lcao", "ecut": 500.0}).settings_hash == lcao.settings_hash
