"""VASP: writes INCAR/KPOINTS/POSCAR/POTCAR into a job folder, runs a configured
command, parses vasprun.xml.

The INCAR follows doped's defect set with ShakeNBreak's changes (ENCUT 300 eV,
EDIFF 1e-5, ISMEAR 0 / SIGMA 0.05, PREC Accurate, LREAL Auto with ROPT, LASPH, ISYM 0,
LORBIT 11, no CHGCAR/WAVECAR) as a single point (NSW 0, IBRION -1), with NELM 100
rather than ShakeNBreak's 40, because a label needs a converged SCF. NELECT is
ΣZVAL − q with the ZVALs read from the POTCARs; multiplicity > 1 gives ISPIN 2 with
NUPDOWN = multiplicity − 1, so VASP computes the requested spin state. HSE06 adds
LHFCALC, HFSCREEN 0.2 (VASP's HSE06; doped uses 0.208 — set ``hfscreen`` to match
other calculations), AEXX 0.25 and PRECFOCK Fast. POTCAR symbols are doped's choices.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml
from ase import Atoms
from ase.calculators.calculator import Calculator

from activedefect.geometry import content_hash
from activedefect.labels import OK, LabelResult
from activedefect.oracle.backends.base import Backend, SettingsError
from activedefect.oracle.backends.label_calculator import LabelCalculator

FUNCTIONALS = ("PBE", "HSE06")
HSE_KEYS = ("aexx", "hfscreen", "precfock")
#: INCAR tags this backend writes itself; ``incar`` may not set them.
MANAGED_TAGS = frozenset(
    "PREC ENCUT EDIFF ALGO NELM ISMEAR SIGMA LREAL ROPT LASPH GGA ISYM NSW IBRION ISIF ISPIN NUPDOWN "
    "NELECT LORBIT LCHARG LWAVE LHFCALC HFSCREEN AEXX PRECFOCK NCORE KPAR".split()
)


@cache
def doped_potcar_symbols() -> dict[str, str]:
    """Element -> POTCAR symbol, as doped (and ShakeNBreak) choose them."""
    spec = importlib.util.find_spec("doped")
    path = Path(next(iter(spec.submodule_search_locations))) / "VASP_sets" / "PotcarSet.yaml"
    return dict(yaml.safe_load(path.read_text())["POTCAR"])


def read_potcar_header(path: Path) -> dict[str, Any]:
    """TITEL and ZVAL of a single-element POTCAR."""
    text = path.read_text(errors="replace")
    titel = re.search(r"TITEL\s*=\s*(.+)", text)
    zval = re.search(r"ZVAL\s*=\s*([-+0-9.Ee]+)", text)
    if titel is None or zval is None:
        raise ValueError(f"{path} has no TITEL or ZVAL line; is it a POTCAR?")
    return {"titel": titel.group(1).strip(), "zval": float(zval.group(1))}


def species_order(atoms: Atoms) -> tuple[list[str], np.ndarray]:
    """Species in order of first appearance and the permutation that groups the
    atoms by species (VASP needs one block per POTCAR)."""
    symbols = atoms.get_chemical_symbols()
    species = list(dict.fromkeys(symbols))
    order = np.array([i for s in species for i, sym in enumerate(symbols) if sym == s], dtype=int)
    return species, order


def format_incar_value(value: Any) -> str:
    if isinstance(value, bool):
        return ".TRUE." if value else ".FALSE."
    if isinstance(value, (list, tuple)):
        return " ".join(format_incar_value(v) for v in value)
    return str(value)


def parse_vasprun(path: Path) -> dict[str, Any]:
    """Free energy (eV), forces (eV/Å), stress (eV/Å^3, Voigt), electronic steps of the
    last ionic step, NELM and the VASP version from a vasprun.xml.

    Raises ValueError when the file is missing, unreadable or has no finished ionic step.
    """
    from ase.io import read

    if not path.is_file():
        raise ValueError(f"{path.name} was not written")
    try:
        root = ET.parse(path).getroot()
        atoms = read(path, format="vasp-xml", index=-1)
    except Exception as exc:
        raise ValueError(f"{path.name} is unreadable ({type(exc).__name__}: {exc})") from exc
    steps = root.findall("calculation")
    if atoms.calc is None or not steps:
        raise ValueError(f"{path.name} has no finished ionic step")
    nelm = root.find("parameters//i[@name='NELM']")
    version = root.find("generator/i[@name='version']")
    stress = atoms.calc.results.get("stress")
    return {
        "energy_eV": float(atoms.calc.results["free_energy"]),
        "forces_eV_A": atoms.calc.results.get("forces"),
        "stress_eV_A3": None if stress is None else np.asarray(stress),
        "n_atoms": len(atoms),
        "scf_steps": len(steps[-1].findall("scstep")),
        "nelm": int(nelm.text) if nelm is not None else None,
        "version": version.text.strip() if version is not None else "unknown",
    }


class VaspBackend(Backend):
    """Settings (level of theory): ``functional`` PBE | HSE06, ``encut`` (eV), ``ediff``
    (eV), ``sigma`` (eV, Gaussian smearing), ``prec``, ``lreal``, ``kpts`` (Γ-centred
    grid), ``aexx``/``hfscreen``/``precfock`` (HSE06), ``potcars`` (element → POTCAR
    symbol overrides), ``incar`` (extra INCAR tags). Numerical: ``nelm``, ``algo``.
    Runtime: ``command`` (default ``$ASE_VASP_COMMAND``), ``workdir`` (root for kept job
    folders; without it a temporary folder is removed afterwards), ``potcar_dir``
    (folder of ``<symbol>/POTCAR``; default ``$VASP_PP_PATH/potpaw_PBE``), ``ncore``,
    ``kpar``.
    """

    name = "vasp"
    code = "vasp"
    defaults: ClassVar[dict[str, Any]] = {
        "functional": "PBE",
        "encut": 300.0,
        "ediff": 1e-5,
        "sigma": 0.05,
        "prec": "Accurate",
        "lreal": "Auto",
        "kpts": [1, 1, 1],
        "aexx": 0.25,
        "hfscreen": 0.2,
        "precfock": "Fast",
        "potcars": {},
        "incar": {},
        "nelm": 100,
        "algo": "Normal",
        "command": None,
        "workdir": None,
        "potcar_dir": None,
        "ncore": None,
        "kpar": None,
    }
    numerical_keys = frozenset({"nelm", "algo"})
    runtime_keys = frozenset({"command", "workdir", "potcar_dir", "ncore", "kpar"})

    @classmethod
    def check_values(cls, given: dict[str, Any], merged: dict[str, Any]) -> None:
        if merged["functional"] not in FUNCTIONALS:
            raise SettingsError(f"vasp backend: functional must be one of {FUNCTIONALS}, got {merged['functional']!r}")
        if merged["functional"] == "PBE":
            for key in HSE_KEYS:
                if key in given:
                    raise SettingsError(f"vasp backend: {key!r} applies to functional HSE06 only, not PBE")
        for key in ("encut", "ediff", "sigma"):
            if not isinstance(merged[key], (int, float)) or merged[key] <= 0:
                raise SettingsError(f"vasp backend: {key} must be a positive number, got {merged[key]!r}")
        kpts = merged["kpts"]
        if len(kpts) != 3 or any(int(k) != k or k < 1 for k in kpts):
            raise SettingsError(f"vasp backend: kpts must be three integers >= 1, got {kpts!r}")
        if not isinstance(merged["nelm"], int) or merged["nelm"] < 1:
            raise SettingsError(f"vasp backend: nelm must be an integer >= 1, got {merged['nelm']!r}")
        clash = sorted(MANAGED_TAGS & {str(k).upper() for k in merged["incar"]})
        if clash:
            raise SettingsError(
                f"vasp backend: incar sets {clash[0]}, which the backend writes; use the lower-case setting "
                f"(e.g. 'encut', 'nelm', 'ncore') or charge/multiplicity"
            )

    def unused_keys(self, settings: dict[str, Any]) -> set[str]:
        return set(HSE_KEYS) if settings["functional"] == "PBE" else set()

    def retry_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Twice NELM and the robust all-bands algorithm."""
        return {**settings, "nelm": 2 * settings["nelm"], "algo": "All"}

    def calculator(self, charge: int, multiplicity: int) -> Calculator:
        return LabelCalculator(self, charge, multiplicity)

    # --- POTCARs and electrons ------------------------------------------------------

    def potcar_symbols(self, species: list[str]) -> list[str]:
        symbols = {**doped_potcar_symbols(), **self.settings["potcars"]}
        missing = [s for s in species if s not in symbols]
        if missing:
            raise ValueError(f"no POTCAR symbol for {missing[0]}; add it to the 'potcars' setting")
        return [symbols[s] for s in species]

    def potcar_dir(self) -> Path | None:
        if self.settings["potcar_dir"]:
            return Path(self.settings["potcar_dir"])
        if os.environ.get("VASP_PP_PATH"):
            return Path(os.environ["VASP_PP_PATH"]) / "potpaw_PBE"
        return None

    def potcar_headers(self, species: list[str]) -> list[dict[str, Any]] | None:
        """TITEL/ZVAL per species from the POTCAR folder, or None when none is configured."""
        folder = self.potcar_dir()
        if folder is None:
            return None
        headers = []
        for symbol in self.potcar_symbols(species):
            path = folder / symbol / "POTCAR"
            if not path.is_file():
                raise ValueError(f"POTCAR for {symbol} not found at {path}; check 'potcar_dir' / VASP_PP_PATH")
            headers.append({"symbol": symbol, "path": path, **read_potcar_header(path)})
        return headers

    def electron_count(self, atoms: Atoms) -> float:
        """Valence electrons (ΣZVAL) when POTCARs are configured, else ΣZ (same parity)."""
        species, _ = species_order(atoms)
        headers = self.potcar_headers(species)
        if headers is None:
            return super().electron_count(atoms)
        symbols = atoms.get_chemical_symbols()
        return float(sum(h["zval"] * symbols.count(s) for s, h in zip(species, headers)))

    # --- inputs ---------------------------------------------------------------------

    def incar(
        self, atoms: Atoms, charge: int, multiplicity: int, settings: dict[str, Any], nelect: float | None
    ) -> dict[str, Any]:
        species, _ = species_order(atoms)
        tags: dict[str, Any] = {
            "PREC": settings["prec"],
            "ENCUT": settings["encut"],
            "EDIFF": settings["ediff"],
            "ALGO": settings["algo"],
            "NELM": settings["nelm"],
            "ISMEAR": 0,
            "SIGMA": settings["sigma"],
            "LREAL": settings["lreal"],
        }
        if str(settings["lreal"]).lower() == "auto":
            tags["ROPT"] = [1e-3] * len(species)  # as ShakeNBreak: 1e-3 per species
        tags.update(
            LASPH=True, GGA="PE", ISYM=0, NSW=0, IBRION=-1, ISIF=2,
            ISPIN=2 if multiplicity > 1 else 1,
        )
        if multiplicity > 1:
            tags["NUPDOWN"] = multiplicity - 1
        tags.update(NELECT=nelect, LORBIT=11, LCHARG=False, LWAVE=False)
        if settings["functional"] == "HSE06":
            tags.update(
                LHFCALC=True, HFSCREEN=settings["hfscreen"], AEXX=settings["aexx"], PRECFOCK=settings["precfock"]
            )
        for key in ("ncore", "kpar"):
            if settings[key] is not None:
                tags[key.upper()] = settings[key]
        tags.update({str(k).upper(): v for k, v in settings["incar"].items()})
        return tags

    def write_inputs(
        self,
        atoms: Atoms,
        charge: int,
        multiplicity: int,
        directory: str | Path,
        settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write INCAR, KPOINTS, POSCAR (atoms grouped by species), POTCAR.spec and,
        when a POTCAR folder is configured, POTCAR. Returns the INCAR tags and the atom
        order (POSCAR index -> input index).

        NELECT needs the POTCAR ZVALs: without a POTCAR folder only a neutral cell can
        be written (NELECT left to VASP).
        """
        from ase.io import write

        settings = self.settings if settings is None else settings
        self.check_charge(atoms, charge, multiplicity)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        species, order = species_order(atoms)
        symbols = self.potcar_symbols(species)
        headers = self.potcar_headers(species)
        if headers is None and charge != 0:
            raise ValueError(
                f"charge {charge:+d} needs NELECT = sum(ZVAL) - q, and ZVAL comes from the POTCARs; "
                "set the 'potcar_dir' setting or VASP_PP_PATH"
            )
        nelect = None if headers is None else self.electron_count(atoms) - charge
        tags = self.incar(atoms, charge, multiplicity, settings, nelect)
        if nelect is None:
            del tags["NELECT"]
        header = f"# activedefect {settings['functional']} single point, charge {charge:+d}, 2S+1 = {multiplicity}"
        lines = [header] + [f"{k} = {format_incar_value(v)}" for k, v in tags.items()]
        (directory / "INCAR").write_text("\n".join(lines) + "\n")
        kx, ky, kz = (int(k) for k in settings["kpts"])
        (directory / "KPOINTS").write_text(f"Gamma-centred grid\n0\nGamma\n{kx} {ky} {kz}\n0 0 0\n")
        grouped = Atoms(atoms.numbers[order], atoms.positions[order], cell=atoms.cell, pbc=True)
        write(directory / "POSCAR", grouped, format="vasp", direct=True)
        (directory / "POTCAR.spec").write_text("\n".join(symbols) + "\n")
        if headers is not None:
            with open(directory / "POTCAR", "wb") as out:
                for h in headers:
                    out.write(h["path"].read_bytes())
        titels = None if headers is None else [h["titel"] for h in headers]
        return {"incar": tags, "order": order, "potcar_titels": titels}

    # --- running --------------------------------------------------------------------

    def command(self, settings: dict[str, Any]) -> str:
        command = settings["command"] or os.environ.get("ASE_VASP_COMMAND")
        if not command:
            raise ValueError(
                "vasp backend has no command: set the 'command' setting (e.g. 'mpirun -np 4 vasp_std') "
                "or ASE_VASP_COMMAND"
            )
        return command

    def attempt(self, atoms, charge, multiplicity, settings, timeout_s):
        workdir = settings["workdir"]
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        prefix = f"{content_hash(atoms, charge, multiplicity)[:12]}-{self.settings_hash}-"
        job = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir))
        try:
            return self._run_job(job, atoms, charge, multiplicity, settings, timeout_s, keep=workdir is not None)
        finally:
            if workdir is None:
                shutil.rmtree(job, ignore_errors=True)

    def _run_job(self, job: Path, atoms, charge, multiplicity, settings, timeout_s, keep: bool) -> LabelResult:
        meta: dict[str, Any] = {"job_dir": str(job)} if keep else {}
        try:
            command = self.command(settings)
            written = self.write_inputs(atoms, charge, multiplicity, job, settings)
        except ValueError as exc:
            return LabelResult("bad_input", "", reason=str(exc), metadata=meta)
        meta["potcars"] = written["potcar_titels"]
        with open(job / "vasp.out", "wb") as log:
            # A session of its own, so a timeout kills mpirun and every rank with it.
            process = subprocess.Popen(
                command,
                shell=True, cwd=job, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
            try:
                returncode = process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return LabelResult("timeout", "", reason="VASP and its process group killed", metadata=meta)
        meta["returncode"] = returncode
        try:
            parsed = parse_vasprun(job / "vasprun.xml")
        except ValueError as exc:
            tail = (job / "vasp.out").read_text(errors="replace")[-400:]
            reason = f"{exc} (exit code {returncode}); output ends: {tail}"
            return LabelResult("crashed", "", reason=reason, metadata=meta)
        meta.update(version=parsed["version"], scf_steps=parsed["scf_steps"], energy_kind="free_energy")
        if parsed["nelm"] is not None and parsed["scf_steps"] >= parsed["nelm"]:
            return LabelResult(
                "scf_not_converged",
                "",
                reason=f"electronic steps hit NELM = {parsed['nelm']}",
                metadata=meta,
            )
        forces = parsed["forces_eV_A"]
        if forces is not None and parsed["n_atoms"] == len(atoms):
            back = np.empty_like(forces)
            back[written["order"]] = forces  # POSCAR order -> input order
            forces = back
        return LabelResult(OK, "", parsed["energy_eV"], forces, parsed["stress_eV_A3"], metadata=meta)
