"""Backend contract with real tblite and small ASE test calculators."""

from __future__ import annotations

import os
import re
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes
from ase.optimize import BFGS

from activedefect.labels import FAILURE_CODES, settings_hash
from activedefect.oracle.backends import BACKENDS, SettingsError, get_backend
from activedefect.oracle.backends.xtb import TBLITE_METHODS, XtbBackend

METADATA_KEYS = {
    "backend", "code", "version", "settings", "settings_hash", "wall_s", "retries", "charge", "multiplicity"
}


@pytest.fixture(scope="module")
def vacancy() -> Atoms:
    """8-atom diamond with one vacancy: 7 C atoms, 42 electrons."""
    atoms = bulk("C", "diamond", 3.567, cubic=True)
    del atoms[0]
    return atoms


@pytest.fixture(scope="module")
def rattled(vacancy) -> Atoms:
    atoms = vacancy.copy()
    atoms.rattle(0.2, seed=1)
    return atoms


@pytest.fixture(scope="module")
def xtb():
    return get_backend("xtb")


def test_registry_names_and_unknown_backend():
    assert set(BACKENDS) == {"xtb", "gpaw", "vasp", "ase"}
    assert isinstance(get_backend("xtb"), XtbBackend)
    with pytest.raises(SettingsError, match="unknown backend 'orca'.*ase, gpaw, vasp, xtb"):
        get_backend("orca")


def test_xtb_neutral_and_charged_single_points(xtb, vacancy):
    neutral = xtb.calculate(vacancy, 0, 1)
    anion = xtb.calculate(vacancy, -1, 2)
    for label, charge, multiplicity in ((neutral, 0, 1), (anion, -1, 2)):
        assert label.ok, label.reason
        assert label.forces_eV_A.shape == (7, 3) and np.isfinite(label.forces_eV_A).all()
        assert label.stress_eV_A3.shape == (6,)
        assert METADATA_KEYS <= set(label.metadata)
        assert label.metadata["code"] == "tblite" and label.metadata["version"] == "0.8.0"
        assert label.metadata["settings"]["method"] == "GFN1-xTB"
        meta = label.metadata
        assert (meta["charge"], meta["multiplicity"], meta["retries"]) == (charge, multiplicity, 0)
        assert label.settings_hash == label.metadata["settings_hash"] == xtb.settings_hash
    assert abs(neutral.energy_eV - anion.energy_eV) > 1.0
    assert not np.allclose(neutral.forces_eV_A, anion.forces_eV_A)


def test_xtb_forces_are_the_derivative_of_the_energy(xtb, vacancy):
    """The stored energy must be the one the forces belong to (force matching)."""
    label = xtb.calculate(vacancy, -1, 2)
    h = 1e-3
    energies = []
    for sign in (1, -1):
        moved = vacancy.copy()
        moved.positions[2, 0] += sign * h
        energies.append(xtb.calculate(moved, -1, 2).energy_eV)
    assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(label.forces_eV_A[2, 0], abs=1e-3)


def test_settings_hash_is_the_level_of_theory(xtb):
    assert xtb.settings_hash == settings_hash("xtb", xtb.level_of_theory())
    assert "max_iterations" not in xtb.level_of_theory() and "verbosity" not in xtb.level_of_theory()
    assert get_backend("xtb", {"max_iterations": 500, "mixer_damping": 0.1}).settings_hash == xtb.settings_hash
    assert get_backend("xtb", {"method": "GFN1-xTB"}).settings_hash == xtb.settings_hash
    assert get_backend("xtb", {"electronic_temperature": 1000.0}).settings_hash != xtb.settings_hash
    assert get_backend("xtb", {"method": "GFN2-xTB"}).settings_hash != xtb.settings_hash


@pytest.mark.parametrize("method", TBLITE_METHODS)
def test_every_method_the_xtb_backend_accepts_runs_in_tblite(method):
    """The accepted names are written out (tblite has no public list): each must run."""
    label = get_backend("xtb", {"method": method}).calculate(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]],
                                                                    cell=[8, 8, 8], pbc=True), 0, 1)
    assert label.ok and np.isfinite(label.energy_eV) and label.energy_eV < 0


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"temperature": 1000.0}, "unknown setting 'temperature'; accepted settings: .*electronic_temperature"),
        # tblite documents initial_guess, but only reads "guess": reject the silent no-op.
        ({"initial_guess": "eeq"}, "unknown setting 'initial_guess'.*guess"),
        ({"method": "GFN3-xTB"}, "unknown method 'GFN3-xTB'; tblite knows GFN2-xTB, GFN1-xTB, IPEA1-xTB"),
        ({"charge": -1}, "'charge' is not a setting; pass it to calculate"),
        ({"max_iterations": 0}, "max_iterations must be an integer >= 1"),
        ({"electronic_temperature": -5}, "electronic_temperature must be a positive number"),
    ],
)
def test_xtb_rejects_bad_settings(settings, match):
    with pytest.raises(SettingsError, match=match):
        get_backend("xtb", settings)
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize(
    ("charge", "multiplicity", "match"),
    [
        # xTB counts valence electrons: 4 per C, 28 in C7
        (-1, 1, r"charge -1 leaves C7 with 29 electrons \(odd\), which needs multiplicity 2, 4, ...; got 1. "
                r"Use multiplicity 2"),
        (0, 2, r"charge \+0 leaves C7 with 28 electrons \(even\), which needs multiplicity 1, 3, ...; got 2"),
        (29, 1, r"charge \+29 removes more electrons than C7 has \(28\); use a charge <= 28"),
        (26, 5, "multiplicity 5 needs 4 unpaired electrons but C7 at charge \\+26 has only 2"),
        (0, 0, r"multiplicity \(2S\+1\) must be an integer >= 1"),
        (0.5, 1, "charge must be an integer"),
    ],
)
def test_impossible_charge_and_multiplicity(xtb, vacancy, charge, multiplicity, match):
    with pytest.raises(ValueError, match=match):
        xtb.check_charge(vacancy, charge, multiplicity)
    label = xtb.calculate(vacancy, charge, multiplicity)
    assert label.status == "bad_input" and label.energy_eV is None
    assert "charge" in label.reason or "multiplicity" in label.reason


def test_scf_failure_is_typed_and_retried_with_numerical_settings_only(rattled):
    backend = get_backend("xtb", {"max_iterations": 1}, retries=2)
    label = backend.calculate(rattled, -1, 2)
    assert label.status == "scf_not_converged"
    assert "SCF not converged in 4 cycles" in label.reason
    assert label.metadata["retries"] == 2
    used = label.metadata["settings"]
    assert used["max_iterations"] == 4 and used["mixer_damping"] == pytest.approx(0.1)
    assert backend.level_of_theory(used) == backend.level_of_theory()  # only numerical keys changed
    assert label.settings_hash == backend.settings_hash
    assert label.energy_eV is None and label.forces_eV_A is None


def test_scf_retry_can_succeed(rattled):
    backend = get_backend("xtb", {"max_iterations": 3}, retries=5)
    label = backend.calculate(rattled, 0, 1)
    assert label.ok, label.reason
    retries = label.metadata["retries"]
    assert retries >= 1 and label.metadata["settings"]["max_iterations"] == 3 * 2**retries
    assert label.settings_hash == get_backend("xtb").settings_hash
    without_retry = get_backend("xtb", {"max_iterations": 3}, retries=0).calculate(rattled, 0, 1)
    assert without_retry.status == "scf_not_converged" and without_retry.metadata["retries"] == 0


def test_timeout_kills_the_calculation(vacancy):
    label = get_backend("xtb", timeout_s=0.01).calculate(vacancy, 0, 1)
    assert label.status == "timeout"
    assert "0.01" in label.reason and label.wall_s < 5


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_child_process_gives_the_in_process_result(xtb, vacancy, start_method):
    backend = get_backend("xtb", timeout_s=120)
    backend.start_method = start_method
    in_child = backend.calculate(vacancy, -1, 2)
    in_process = xtb.calculate(vacancy, -1, 2)
    assert in_child.ok, in_child.reason
    assert in_child.energy_eV == pytest.approx(in_process.energy_eV, abs=1e-8)
    np.testing.assert_allclose(in_child.forces_eV_A, in_process.forces_eV_A, atol=1e-8)


def test_xtb_calculator_relaxes_and_raises_typed_failures(vacancy, rattled):
    atoms = vacancy.copy()
    atoms.rattle(0.05, seed=3)
    atoms.calc = get_backend("xtb").calculator(-1, 2)
    start = atoms.get_potential_energy()
    BFGS(atoms, logfile=None).run(fmax=0.5, steps=5)
    assert atoms.get_potential_energy() < start
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(atoms.get_potential_energy())

    failing = rattled.copy()
    failing.calc = get_backend("xtb", {"max_iterations": 1}).calculator(-1, 2)
    with pytest.raises(CalculationFailed, match="^scf_not_converged: SCF not converged"):
        failing.get_forces()
    wrong_spin = vacancy.copy()
    wrong_spin.calc = get_backend("xtb").calculator(-1, 1)
    with pytest.raises(CalculationFailed, match="^bad_input: charge -1 leaves C7 with 29 electrons"):
        wrong_spin.get_potential_energy()


# --- generic ASE backend with tiny test calculators --------------------------------------


class NaNCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": 0.0, "forces": np.full((len(self.atoms), 3), np.nan)}


class ShortForcesCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": -1.0, "forces": np.zeros((len(self.atoms) - 1, 3))}


class ExplodingCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("segfault stand-in")


class HangingCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        time.sleep(60)


class ChargedToyCalculator(Calculator):
    """Takes ``charge``: E = q² eV, zero forces."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, charge=0, **kwargs):
        super().__init__(**kwargs)
        self.charge = charge

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": float(self.charge**2), "forces": np.zeros((len(self.atoms), 3))}


def ase_backend(cls: type, **kwargs):
    return get_backend("ase", {"calculator": f"{__name__}.{cls.__name__}", **kwargs})


@pytest.mark.parametrize(
    ("cls", "status", "reason"),
    [
        (NaNCalculator, "non_finite", "non-finite forces"),
        (ShortForcesCalculator, "wrong_atom_count", r"forces have shape \(6, 3\), expected \(7, 3\)"),
        (ExplodingCalculator, "crashed", "RuntimeError: segfault stand-in"),
    ],
)
def test_invalid_results_become_typed_failures(vacancy, cls, status, reason):
    label = ase_backend(cls).calculate(vacancy, 0, 1)
    assert label.status == status and status in FAILURE_CODES
    assert label.forces_eV_A is None and label.energy_eV is None
    assert label.wall_s > 0
    assert re.search(reason, label.reason), label.reason


def test_hung_calculation_returns_timeout(vacancy):
    backend = get_backend("ase", {"calculator": f"{__name__}.HangingCalculator"}, timeout_s=1.0)
    start = time.perf_counter()
    label = backend.calculate(vacancy, 0, 1)
    assert label.status == "timeout" and "timeout_s=1 s" in label.reason
    assert time.perf_counter() - start < 5


def test_ase_backend_with_emt_and_charge_passing(vacancy):
    cu = bulk("Cu", "fcc", 3.6, cubic=True)
    emt = get_backend("ase", {"calculator": "ase.calculators.emt.EMT"})
    label = emt.calculate(cu, 0, 1)
    assert label.ok and label.metadata["code"] == "ase.calculators.emt.EMT"
    assert label.metadata["version"] == "3.29.0" and label.stress_eV_A3.shape == (6,)
    refused = emt.calculate(cu, -2, 1)
    assert refused.status == "bad_input" and "takes no charge" in refused.reason
    toy = ase_backend(ChargedToyCalculator)
    assert toy.calculate(vacancy, -2, 1).energy_eV == 4.0
    assert toy.calculate(vacancy, 0, 1).energy_eV == 0.0


def test_ase_backend_rejects_bad_settings():
    with pytest.raises(SettingsError, match="cannot import calculator 'ase.calculators.emt.NoSuchCalc'"):
        get_backend("ase", {"calculator": "ase.calculators.emt.NoSuchCalc"})
    with pytest.raises(SettingsError, match="unknown setting 'calc'; accepted settings: calculator, kwargs"):
        get_backend("ase", {"calc": "ase.calculators.emt.EMT"})
    with pytest.raises(SettingsError, match="'charge' is not a keyword argument"):
        get_backend("ase", {"calculator": "tblite.ase.TBLite", "kwargs": {"charge": 1}})


def test_ase_backend_passes_charge_and_multiplicity_to_tblite(vacancy, xtb):
    """TBLite takes charge/multiplicity through default_parameters, not its signature."""
    backend = get_backend("ase", {"calculator": "tblite.ase.TBLite", "kwargs": {"method": "GFN1-xTB", "verbosity": 0}})
    label = backend.calculate(vacancy, -1, 2)
    assert label.energy_eV == pytest.approx(xtb.calculate(vacancy, -1, 2).energy_eV, abs=1e-8)


def test_backend_arguments_are_checked():
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        get_backend("xtb", timeout_s=0)
    with pytest.raises(ValueError, match="retries must be a non-negative integer"):
        get_backend("xtb", retries=-1)


def test_xtb_counts_valence_electrons_as_tblite_does():
    from activedefect.oracle.backends.xtb import xtb_valence_electrons

    assert [xtb_valence_electrons(z) for z in (1, 6, 14, 30, 31, 48, 52, 80, 82)] == [1, 4, 4, 12, 3, 12, 6, 12, 4]


def test_oracle_relaxation_replays_known_steps_instead_of_recomputing():
    """A resumed confirm/bootstrap relaxation computes only the steps not labelled yet."""
    from ase.build import bulk

    from activedefect.geometry import content_hash
    from activedefect.oracle.tasks import BackendCall, relax_with_oracle

    atoms = bulk("C", "diamond", a=3.549).repeat((2, 1, 1))
    del atoms[0]
    atoms.rattle(0.05, seed=1)
    atoms.info.update(total_charge=0, total_spin=1, defect="v_C")
    call = BackendCall("xtb", {"method": "GFN1-xTB", "electronic_temperature": 1000}, None, 1)
    first = relax_with_oracle(call, atoms, 0.05, 5, {})
    assert len(first.new) == 6 and all(label.ok for _, label in first.new)
    assert [content_hash(f) for f, _ in first.path] == [content_hash(f) for f, _ in first.new]
    assert first.new[0][0].info["defect"] == "v_C"
    known = {content_hash(frame): label for frame, label in first.new[:3]}
    second = relax_with_oracle(call, atoms, 0.05, 5, known)
    assert [content_hash(f) for f, _ in second.new] == [content_hash(f) for f, _ in first.new[3:]]
    assert [content_hash(f) for f, _ in second.path] == [content_hash(f) for f, _ in first.path]
    assert second.path[0][1] is known[content_hash(first.new[0][0])]  # replayed, not recomputed
