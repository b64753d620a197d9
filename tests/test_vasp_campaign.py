"""campaigns/vasp-cdte-v-cd.yaml: it validates, its seeds are real ShakeNBreak
distortions of the 63-atom V_Cd cell, the VASP inputs written for a seed carry the
campaign's level of theory (no VASP run), and its cluster block gives job scripts."""

from __future__ import annotations

from pathlib import Path

import pytest

from activedefect.oracle.backends import get_backend
from activedefect.seeds.preparation import build_campaign_seeds
from activedefect.spec import load_spec

ROOT = Path(__file__).parent.parent
SPEC = ROOT / "campaigns" / "vasp-cdte-v-cd.yaml"
POTCARS = Path(__file__).parent / "data" / "vasp" / "potcars"
ZVAL = {"Cd": 12, "Te": 6}


def read_incar(path: Path) -> dict[str, str]:
    lines = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in lines}


@pytest.fixture(scope="module")
def spec():
    return load_spec(SPEC)


@pytest.fixture(scope="module")
def seeds(spec):
    return build_campaign_seeds(spec)


def test_spec_loads_with_vasp_on_both_fidelities(spec):
    assert {f: b.backend for f, b in spec.fidelities.items()} == {"low": "vasp", "high": "vasp"}
    assert spec.fidelities["low"].settings["functional"] == "PBE"
    assert spec.fidelities["high"].settings["functional"] == "HSE06"
    assert spec.fidelities["high"].executor == "pyiron"
    assert set(spec.cluster.jobqueue.pools) == {"dft", "ml"}


def test_seeds_are_shakenbreak_distortions_of_the_63_atom_cell(seeds):
    assert {s.charge for s in seeds} == {0, -1, -2}
    assert {len(s.atoms) for s in seeds} == {63}
    assert any(s.distortion == "Dimer" for s in seeds)
    assert any(s.distortion.startswith("Bond_Distortion_-60") for s in seeds)


@pytest.mark.parametrize("fidelity, charge", [("low", -2), ("high", -1)])
def test_vasp_inputs_for_a_seed_carry_the_campaigns_settings(spec, seeds, tmp_path, fidelity, charge):
    seed = next(s for s in seeds if s.charge == charge and s.distortion != "Unperturbed")
    settings = {**spec.fidelities[fidelity].settings, "potcar_dir": str(POTCARS)}
    backend = get_backend("vasp", settings)
    backend.write_inputs(seed.atoms, seed.charge, seed.multiplicity, tmp_path)
    incar = read_incar(tmp_path / "INCAR")
    symbols = seed.atoms.get_chemical_symbols()
    assert symbols.count("Cd") == 31 and symbols.count("Te") == 32
    assert float(incar["NELECT"]) == 31 * ZVAL["Cd"] + 32 * ZVAL["Te"] - charge
    assert (incar["ENCUT"], incar["EDIFF"], incar["ISMEAR"], incar["SIGMA"]) == ("300", "1e-05", "0", "0.05")
    assert (incar["PREC"], incar["LREAL"], incar["ISYM"], incar["NSW"], incar["NCORE"]) == (
        "Accurate", "Auto", "0", "0", "16")
    assert incar["ISPIN"] == ("2" if seed.multiplicity > 1 else "1")
    kpoints = (tmp_path / "KPOINTS").read_text().splitlines()[3]
    if fidelity == "low":
        assert "LHFCALC" not in incar and kpoints == "1 1 1"
    else:
        assert (incar["LHFCALC"], incar["HFSCREEN"], incar["AEXX"], incar["KPAR"]) == (".TRUE.", "0.208", "0.25", "2")
        assert kpoints == "2 2 2"
    assert (tmp_path / "POTCAR.spec").read_text().split() == ["Cd", "Te"]


def test_cluster_block_gives_a_job_script_per_pool(spec):
    pytest.importorskip("dask_jobqueue")
    from campaign_support import worker_command

    from activedefect.execution.jobqueue import job_scripts

    scripts = job_scripts(spec.cluster.jobqueue)
    assert "#SBATCH --cpus-per-task=128" in scripts["dft"] and "#SBATCH -A my-project" in scripts["dft"]
    assert "module load vasp/6.4.2" in scripts["dft"]
    assert "--resources label=1" in worker_command(scripts["dft"])
    assert "--resources train=1,explore=1" in worker_command(scripts["ml"])
    assert "--nworkers 8" in worker_command(scripts["ml"])
