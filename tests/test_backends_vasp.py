"""VASP backend: inputs, vasprun.xml parsing, and the whole path through a stand-in
executable (tests/fake_vasp.py), since no VASP binary is available."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import ase
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import CalculationFailed
from ase.calculators.lj import LennardJones
from ase.io import read

from activedefect.oracle.backends import SettingsError, get_backend
from activedefect.oracle.backends.vasp import parse_vasprun, read_potcar_header

HERE = Path(__file__).parent
POTCARS = HERE / "data" / "vasp" / "potcars"
FAKE_VASP = f"{sys.executable} {HERE / 'fake_vasp.py'}"
ASE_VASPRUNS = Path(ase.__file__).parent / "test" / "testdata" / "vasp"
ZVAL = {"Si": 4, "C": 4, "Cd": 12, "Te": 6}


def read_incar(path: Path) -> dict[str, str]:
    lines = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in lines}


@pytest.fixture
def cdte_vacancy():
    """8-atom CdTe minus one Cd, rattled; Te and Cd interleaved, so POSCAR regroups them."""
    atoms = bulk("CdTe", "zincblende", 6.48, cubic=True)
    del atoms[0]
    atoms.rattle(0.05, seed=2)
    return atoms


def vasp(tmp_path, retries=1, **settings):
    """The backend running the stand-in, keeping job folders under tmp_path/jobs."""
    settings = {"command": FAKE_VASP, "potcar_dir": str(POTCARS), "workdir": str(tmp_path / "jobs"), **settings}
    return get_backend("vasp", settings, retries=retries)


def test_potcar_headers_give_zval():
    for symbol, zval in ZVAL.items():
        header = read_potcar_header(POTCARS / symbol / "POTCAR")
        assert header["zval"] == zval and header["titel"].startswith(f"PAW_PBE {symbol} ")


def test_hse06_inputs_for_a_charged_open_shell_cell(tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_PP_PATH", raising=False)
    sic = bulk("SiC", "zincblende", 4.36, cubic=True)  # Si, C interleaved
    backend = get_backend("vasp", {"functional": "HSE06", "potcar_dir": str(POTCARS), "kpts": [2, 2, 2]})
    written = backend.write_inputs(sic, 1, 2, tmp_path)
    incar = read_incar(tmp_path / "INCAR")
    assert float(incar["NELECT"]) == 4 * ZVAL["Si"] + 4 * ZVAL["C"] - 1 == 31
    assert (incar["ISPIN"], incar["NUPDOWN"]) == ("2", "1")
    assert (incar["LHFCALC"], incar["HFSCREEN"], incar["AEXX"], incar["PRECFOCK"]) == (".TRUE.", "0.2", "0.25", "Fast")
    assert (incar["NSW"], incar["IBRION"], incar["ISMEAR"]) == ("0", "-1", "0")
    assert (incar["LREAL"], incar["ROPT"]) == ("Auto", "0.001 0.001")
    assert (incar["ENCUT"], incar["EDIFF"], incar["GGA"], incar["LORBIT"]) == ("300.0", "1e-05", "PE", "11")
    assert (tmp_path / "KPOINTS").read_text().splitlines()[2:4] == ["Gamma", "2 2 2"]
    assert (tmp_path / "POTCAR.spec").read_text().split() == ["Si", "C"]
    potcar = (tmp_path / "POTCAR").read_text()
    assert [line.split("=")[1].strip() for line in potcar.splitlines() if "TITEL" in line] == [
        "PAW_PBE Si 05Jan2001",
        "PAW_PBE C 08Apr2002",
    ]
    poscar = read(tmp_path / "POSCAR", format="vasp")
    assert poscar.get_chemical_symbols() == ["Si"] * 4 + ["C"] * 4
    np.testing.assert_allclose(poscar.positions, sic.positions[written["order"]], atol=1e-10)


def test_pbe_closed_shell_inputs(tmp_path):
    backend = get_backend("vasp", {"potcar_dir": str(POTCARS), "ncore": 4, "incar": {"LVHAR": True}})
    atoms = bulk("CdTe", "zincblende", 6.48, cubic=True)
    backend.write_inputs(atoms, -2, 1, tmp_path)
    incar = read_incar(tmp_path / "INCAR")
    assert float(incar["NELECT"]) == 4 * 12 + 4 * 6 + 2
    assert incar["ISPIN"] == "1" and "NUPDOWN" not in incar and "LHFCALC" not in incar
    assert incar["NCORE"] == "4" and incar["LVHAR"] == ".TRUE."
    assert (tmp_path / "KPOINTS").read_text().splitlines()[2:4] == ["Gamma", "1 1 1"]


def test_without_potcars_only_a_neutral_cell_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_PP_PATH", raising=False)
    backend = get_backend("vasp")
    atoms = bulk("Si", "diamond", 5.43)
    backend.write_inputs(atoms, 0, 1, tmp_path)
    assert "NELECT" not in read_incar(tmp_path / "INCAR")
    assert (tmp_path / "POTCAR.spec").read_text().split() == ["Si"] and not (tmp_path / "POTCAR").exists()
    with pytest.raises(ValueError, match="charge -1 needs NELECT.*set the 'potcar_dir' setting or VASP_PP_PATH"):
        backend.write_inputs(atoms, -1, 2, tmp_path)


def test_vasp_pp_path_is_used(tmp_path, monkeypatch):
    (tmp_path / "pp").mkdir()
    shutil.copytree(POTCARS, tmp_path / "pp" / "potpaw_PBE")
    monkeypatch.setenv("VASP_PP_PATH", str(tmp_path / "pp"))
    get_backend("vasp").write_inputs(bulk("Si", "diamond", 5.43), 1, 2, tmp_path / "job")
    assert float(read_incar(tmp_path / "job" / "INCAR")["NELECT"]) == 7


def test_charge_check_counts_valence_electrons():
    """Si2 has 28 electrons but 8 valence electrons in VASP."""
    backend = get_backend("vasp", {"potcar_dir": str(POTCARS)})
    si2 = bulk("Si", "diamond", 5.43)
    backend.check_charge(si2, 8, 1)
    with pytest.raises(ValueError, match=r"charge \+9 removes more electrons than Si2 has \(8\)"):
        backend.check_charge(si2, 9, 2)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"functional": "PBE0"}, "functional must be one of"),
        ({"aexx": 0.3}, "'aexx' applies to functional HSE06 only"),
        ({"incar": {"nelect": 10}}, "incar sets NELECT, which the backend writes"),
        ({"encut_eV": 400}, "unknown setting 'encut_eV'; accepted settings: .*encut"),
    ],
)
def test_vasp_rejects_bad_settings(settings, match):
    with pytest.raises(SettingsError, match=match):
        get_backend("vasp", settings)


def test_vasp_settings_hash_ignores_runtime_and_numerical_keys():
    base = get_backend("vasp")
    numerical_and_runtime = {"nelm": 300, "algo": "All", "command": "vasp_std", "ncore": 8}
    assert get_backend("vasp", numerical_and_runtime).settings_hash == base.settings_hash
    assert get_backend("vasp", {"encut": 400}).settings_hash != base.settings_hash
    assert get_backend("vasp", {"functional": "HSE06"}).settings_hash != base.settings_hash


def test_parse_real_vasprun_files_shipped_with_ase():
    parsed = parse_vasprun(ASE_VASPRUNS / "vasprun_pstress.xml")
    reference = read(ASE_VASPRUNS / "vasprun_pstress.xml", format="vasp-xml")
    assert parsed["energy_eV"] == pytest.approx(reference.get_potential_energy(force_consistent=True))
    np.testing.assert_allclose(parsed["forces_eV_A"], reference.get_forces())
    np.testing.assert_allclose(parsed["stress_eV_A3"], reference.get_stress())
    assert (parsed["scf_steps"], parsed["nelm"], parsed["version"], parsed["n_atoms"]) == (9, 60, "6.3.0", 2)
    dfpt = parse_vasprun(ASE_VASPRUNS / "vasprun_dfpt.xml")
    assert (dfpt["scf_steps"], dfpt["nelm"], dfpt["version"]) == (80, 100, "6.3.2")


def test_parse_rejects_missing_and_truncated_files(tmp_path):
    with pytest.raises(ValueError, match="vasprun.xml was not written"):
        parse_vasprun(tmp_path / "vasprun.xml")
    text = (ASE_VASPRUNS / "vasprun_pstress.xml").read_text()
    (tmp_path / "vasprun.xml").write_text(text[: text.index('<varray name="forces"')])
    with pytest.raises(ValueError, match="vasprun.xml is unreadable"):
        parse_vasprun(tmp_path / "vasprun.xml")


def test_stand_in_run_labels_the_jobs_own_structure(tmp_path, cdte_vacancy):
    backend = vasp(tmp_path)
    neutral = backend.calculate(cdte_vacancy, 0, 1)
    anion = backend.calculate(cdte_vacancy, -2, 1)
    assert neutral.ok and anion.ok, (neutral.reason, anion.reason)
    reference = cdte_vacancy.copy()
    reference.calc = LennardJones(sigma=2.0, epsilon=0.05, rc=6.0, smooth=True)
    assert neutral.energy_eV == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    assert anion.energy_eV - neutral.energy_eV == pytest.approx(0.5 * 2**2, abs=1e-6)  # the stand-in's q² term
    np.testing.assert_allclose(neutral.forces_eV_A, reference.get_forces(), atol=1e-6)  # back in input order
    np.testing.assert_allclose(neutral.stress_eV_A3, reference.get_stress(), atol=1e-8)
    meta = anion.metadata
    assert (meta["code"], meta["version"], meta["scf_steps"], meta["retries"]) == ("vasp", "6.4.2 fake", 12, 0)
    assert meta["potcars"] == ["PAW_PBE Te 08Apr2002", "PAW_PBE Cd 06Sep2000"]
    job = Path(meta["job_dir"])
    assert job.parent == tmp_path / "jobs" and float(read_incar(job / "INCAR")["NELECT"]) == 4 * 6 + 3 * 12 + 2


def test_open_shell_stand_in_run(tmp_path, cdte_vacancy):
    label = vasp(tmp_path).calculate(cdte_vacancy, -1, 2)
    assert label.ok, label.reason
    incar = read_incar(Path(label.metadata["job_dir"]) / "INCAR")
    assert (incar["ISPIN"], incar["NUPDOWN"], float(incar["NELECT"])) == ("2", "1", 61.0)


def test_nelm_hit_is_scf_not_converged_and_retried(tmp_path, cdte_vacancy, monkeypatch):
    monkeypatch.setenv("FAKE_VASP_SCF_STEPS", "150")
    failed = vasp(tmp_path, retries=0).calculate(cdte_vacancy, 0, 1)
    assert failed.status == "scf_not_converged" and failed.reason == "electronic steps hit NELM = 100"
    assert failed.metadata["scf_steps"] == 100
    retried = vasp(tmp_path).calculate(cdte_vacancy, 0, 1)
    assert retried.ok and retried.metadata["retries"] == 1 and retried.metadata["scf_steps"] == 150
    assert (retried.metadata["settings"]["nelm"], retried.metadata["settings"]["algo"]) == (200, "All")
    incar = read_incar(Path(retried.metadata["job_dir"]) / "INCAR")
    assert (incar["NELM"], incar["ALGO"], incar["ENCUT"]) == ("200", "All", "300.0")
    assert retried.settings_hash == failed.settings_hash == get_backend("vasp").settings_hash


@pytest.mark.parametrize(
    ("mode", "match"), [("crash", "vasprun.xml was not written.*VERY BAD NEWS"), ("garbled", "unreadable")]
)
def test_crashes(tmp_path, cdte_vacancy, monkeypatch, mode, match):
    monkeypatch.setenv("FAKE_VASP_MODE", mode)
    label = vasp(tmp_path).calculate(cdte_vacancy, 0, 1)
    assert label.status == "crashed"
    assert re.search(match, label.reason, re.DOTALL), label.reason


def test_hung_vasp_is_killed(tmp_path, cdte_vacancy, monkeypatch):
    monkeypatch.setenv("FAKE_VASP_MODE", "hang")
    backend = get_backend("vasp", {"command": FAKE_VASP, "potcar_dir": str(POTCARS)}, timeout_s=2)
    label = backend.calculate(cdte_vacancy, 0, 1)
    assert label.status == "timeout" and "timeout_s=2 s" in label.reason
    assert label.wall_s < 10


def test_temporary_job_folder_is_removed(tmp_path, cdte_vacancy, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    label = get_backend("vasp", {"command": FAKE_VASP, "potcar_dir": str(POTCARS)}).calculate(cdte_vacancy, 0, 1)
    assert label.ok and "job_dir" not in label.metadata
    assert list(tmp_path.iterdir()) == []


def test_missing_command_or_potcar_is_bad_input(tmp_path, cdte_vacancy, monkeypatch):
    monkeypatch.delenv("ASE_VASP_COMMAND", raising=False)
    label = get_backend("vasp", {"potcar_dir": str(POTCARS)}).calculate(cdte_vacancy, 0, 1)
    assert label.status == "bad_input" and "has no command" in label.reason
    label = get_backend("vasp", {"command": FAKE_VASP, "potcar_dir": str(tmp_path)}).calculate(cdte_vacancy, 0, 1)
    assert label.status == "bad_input" and "POTCAR for Te not found" in label.reason


def test_vasp_calculator_for_relaxations(tmp_path, cdte_vacancy, monkeypatch):
    atoms = cdte_vacancy.copy()
    atoms.calc = vasp(tmp_path).calculator(-1, 2)
    assert atoms.get_forces().shape == (7, 3)
    monkeypatch.setenv("FAKE_VASP_MODE", "crash")
    atoms.positions[0] += 0.01
    with pytest.raises(CalculationFailed, match="^crashed: vasprun.xml was not written"):
        atoms.get_potential_energy()
