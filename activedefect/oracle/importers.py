"""Import labelled data that already exists into a store: ShakeNBreak relaxations run
with VASP, so a campaign starts from the DFT that was already paid for."""

from __future__ import annotations

import gzip
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import numpy as np

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY
from activedefect.labels import OK, LabelResult
from activedefect.store.zarr_store import ORIGIN_KEY, Store

#: Folder names ShakeNBreak gives to distortions; never a defect folder.
DISTORTION_PREFIXES = ("Bond_Distortion", "Unperturbed", "Rattled", "Dimer")
_DEFECT_FOLDER = re.compile(r"^(?P<defect>.+)_(?P<charge>[+-]?\d+)$")
#: ``multiplicity`` may be a function of (defect, charge, number of electrons).
MultiplicityRule = Callable[[str, int, float], int]


def parse_defect_folder(name: str) -> tuple[str, int] | None:
    """Doped-style defect name and charge of a ShakeNBreak folder (``v_Cd_-1`` →
    ``("v_Cd", -1)``, ``Al_Si_+1`` → ``("Al_Si", 1)``), or None for other folders."""
    match = _DEFECT_FOLDER.match(name)
    if match is None or name.startswith(DISTORTION_PREFIXES):
        return None
    return match["defect"], int(match["charge"])


@dataclass(frozen=True)
class VasprunHeader:
    """What a vasprun.xml says before its first ionic step."""

    version: str
    n_electrons: float | None  # NELECT
    nupdown: float | None  # NUPDOWN; -1 or None: not fixed
    valence_electrons: float | None  # sum of ZVAL over the atoms: the neutral count

    @property
    def charge(self) -> int | None:
        """Total charge implied by NELECT and the POTCAR valences."""
        if self.n_electrons is None or self.valence_electrons is None:
            return None
        return int(round(self.valence_electrons - self.n_electrons))

    def multiplicity(self) -> int:
        """2S+1: from NUPDOWN when fixed, else the lowest spin the electron count allows."""
        if self.nupdown is not None and self.nupdown >= 0:
            return int(round(self.nupdown)) + 1
        if self.n_electrons is None:
            raise ValueError("vasprun.xml has no NELECT; pass multiplicity=")
        return 2 if int(round(self.n_electrons)) % 2 else 1


def read_vasprun_header(path: str | Path) -> VasprunHeader:
    """Version, NELECT, NUPDOWN (from ``<parameters>``) and valences (``<atominfo>``),
    reading only the top of the file."""
    path = Path(path)
    version, nelect, nupdown, valence = "", None, None, None
    in_parameters = False
    with (gzip.open(path) if path.suffix == ".gz" else path.open("rb")) as handle:
        for event, elem in ET.iterparse(handle, events=("start", "end")):
            if elem.tag == "parameters":
                in_parameters = event == "start"
            if event != "end":
                continue
            name = elem.attrib.get("name")
            if elem.tag == "i" and name == "version" and not version:
                version = (elem.text or "").strip()
            elif elem.tag == "i" and in_parameters and name in ("NELECT", "NUPDOWN"):
                value = float(elem.text)
                nelect, nupdown = (value, nupdown) if name == "NELECT" else (nelect, value)
            elif elem.tag == "array" and name == "atomtypes":
                fields = [f.text.strip() for f in elem.findall("field")]
                count, zval = fields.index("atomspertype"), fields.index("valence")
                valence = sum(float(rc[count].text) * float(rc[zval].text) for rc in elem.find("set"))
            elif elem.tag == "atominfo":
                break
    return VasprunHeader(version, nelect, nupdown, valence)


@dataclass
class ImportSummary:
    """What an import did: files read, labels added, and files skipped with the reason."""

    files: int = 0
    labels_added: int = 0
    frames: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _defect_and_seed(path: Path, root: Path) -> tuple[str, int, str] | None:
    """(defect, charge, seed) from the outermost defect folder on the path below root.

    Outermost, because ShakeNBreak names re-tried distortions like
    ``Bond_Distortion_-40.0%_from_0``; the root itself counts only when nothing below does.
    """
    parts = path.relative_to(root).parts[:-1]
    for k, part in enumerate(parts):
        parsed = parse_defect_folder(part)
        if parsed is not None and k + 1 < len(parts):
            return parsed[0], parsed[1], parts[k + 1]
    parsed = parse_defect_folder(root.name)
    if parsed is not None and parts:
        return parsed[0], parsed[1], parts[0]
    return None


def import_shakenbreak_vasp(
    folder: str | Path,
    store: Store,
    fidelity: str,
    settings_hash: str,
    *,
    all_steps: bool = False,
    energy_key: str = "free_energy",
    multiplicity: int | MultiplicityRule | None = None,
    metadata: dict[str, Any] | None = None,
) -> ImportSummary:
    """Add every ``<defect>_<charge>/<distortion>/vasprun.xml[.gz]`` under ``folder`` (a
    ShakeNBreak output folder, or one defect's folder) to ``store`` as labels.

    Takes the last completed ionic step of each run (every step with ``all_steps``; an
    unfinished run gives its completed steps). ``energy_key`` is ``"free_energy"`` (the
    default: VASP forces are derivatives of the free energy) or ``"energy"`` (sigma → 0).
    ``multiplicity`` defaults to NUPDOWN + 1 or, when unset, the lowest spin of the
    electron count. A run whose NELECT contradicts the folder's charge is skipped.
    Frames already labelled with ``settings_hash`` are not labelled again.
    """
    if energy_key not in ("free_energy", "energy"):
        raise ValueError(f"energy_key must be 'free_energy' or 'energy', got {energy_key!r}")
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the ShakeNBreak output folder")
    summary = ImportSummary()
    paths = sorted(p for pattern in ("vasprun.xml", "vasprun.xml.gz") for p in root.rglob(pattern))
    for path in paths:
        where = str(path.relative_to(root))
        parsed = _defect_and_seed(path, root)
        if parsed is None:
            summary.skipped.append((where, "no <defect>_<charge> folder (e.g. v_Cd_-1) above it"))
            continue
        defect, charge, seed = parsed
        try:
            header = read_vasprun_header(path)
            steps = ase.io.read(path, index=":", format="vasp-xml")
        except (ET.ParseError, OSError, ValueError, StopIteration) as error:
            summary.skipped.append((where, f"unreadable: {error}"))
            continue
        if header.charge is not None and header.charge != charge:
            summary.skipped.append((where, f"folder says charge {charge:+d} but NELECT gives {header.charge:+d}"))
            continue
        steps = [(k, a) for k, a in enumerate(steps) if a.calc is not None and a.calc.results.get("forces") is not None]
        if not steps:
            summary.skipped.append((where, "no completed ionic step"))
            continue
        if not all_steps:
            steps = steps[-1:]
        try:
            spin = _multiplicity(multiplicity, header, defect, charge)
        except ValueError as error:
            summary.skipped.append((where, str(error)))
            continue
        frames, results = [], []
        for k, atoms in steps:
            calc_results = atoms.calc.results
            frame = atoms.copy()
            frame.calc = None
            frame.info = {CHARGE_KEY: charge, SPIN_KEY: spin, DEFECT_KEY: defect, ORIGIN_KEY: {"seed": seed, "step": k}}
            frames.append(frame)
            meta = {"code": "VASP", "version": header.version, "source": where, "ionic_step": k,
                    "energy_key": energy_key, **(metadata or {})}
            results.append(LabelResult(
                OK, settings_hash, float(calc_results[energy_key]), np.asarray(calc_results["forces"]),
                calc_results.get("stress"), metadata=meta,
            ))
        indices = store.add_frames(frames)
        todo = [(i, r) for i, r in zip(indices, results) if not store.has_label(fidelity, i, settings_hash)]
        before = store.n_labels(fidelity)
        if todo:
            store.add_labels(fidelity, todo)
        summary.files += 1
        summary.frames += indices
        summary.labels_added += store.n_labels(fidelity) - before
    return summary


def _multiplicity(rule: int | MultiplicityRule | None, header: VasprunHeader, defect: str, charge: int) -> int:
    if rule is None:
        return header.multiplicity()
    if callable(rule):
        return int(rule(defect, charge, header.n_electrons if header.n_electrons is not None else float("nan")))
    return int(rule)
