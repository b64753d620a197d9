"""Defect supercells and ShakeNBreak seeds: one seed per defect x charge x distortion.

The host is a supercell (``load_host``); every request names a defect in it, and
ShakeNBreak's ``Distortions`` makes the bond-distorted, dimer, rattled and unperturbed
structures exactly as a ShakeNBreak user would get them, so a campaign's seeds can be
compared with a brute-force ShakeNBreak search one to one.

Conventions (kept deliberately simple and stable, because names key the store):

* Defect names follow doped's core names: ``v_Si`` (vacancy), ``Al_Si`` (substitution),
  ``C_i`` (interstitial), without doped's point-symmetry/neighbour suffix. Two requests
  that would get the same name (two interstitial sites, two inequivalent sites of one
  element) must set ``DefectRequest.name``. Charged names carry a sign: ``v_Si_+1``,
  ``v_Si_0``, ``v_Si_-1``.
* Interstitial ``frac_coords`` and ``site_index`` refer to the host *supercell* that
  ``build_seeds`` receives (as ShakeNBreak's ``from_structures`` does), not to the unit cell.
* Multiplicity defaults to the lowest spin for the electron count ``sum(Z) - charge``:
  1 when even, 2 when odd. Pseudopotential codes count valence electrons only, but their
  cores hold closed shells (an even count), so the parity is the same; the exception is a
  potential that freezes an odd number of f electrons (VASP's ``Ln_3``) — override then.
"""

from __future__ import annotations

import contextlib
import io
import numbers
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.core import Element, PeriodicSite, Species, Structure

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY, format_charge

KINDS = ("vacancy", "substitution", "interstitial")
#: An interstitial closer than this to a host atom is a typo, not a defect.
MIN_INTERSTITIAL_DISTANCE_A = 0.7
#: Closest two host atoms may be (Å); the shortest bond in a crystal (H-H, 0.74 Å) is longer.
MIN_HOST_DISTANCE_A = 0.5
#: Distortion options passed through from the spec, with ShakeNBreak's meaning.
DISTORTION_OPTIONS = (
    "bond_distortions",  # list of fractions, e.g. [-0.3, 0.0, 0.3]; replaces the increment
    "distortion_increment",  # ShakeNBreak default 0.1: -60 % ... +60 % in these steps
    "dimer",  # bool, default True: add ShakeNBreak's Dimer seed for vacancies
    "dimer_bond_length",  # Å; default: ShakeNBreak's estimate
    "local_rattle",  # bool, default False
    "stdev",  # Å, rattle standard deviation; default 10 % of the bulk bond length
    "d_min",  # Å, rattle minimum distance; default 80 % of the bulk bond length
    "seed",  # int >= 1, one rattle seed for all distortions; default: ShakeNBreak's (from the first distortion)
    "n_iter",
    "max_attempts",
    "max_disp",
    "nbr_cutoff",
    "width",
    "distorted_elements",  # {defect name: element or [elements]} to distort
)
_DEFAULT_BOND_DISTORTION_LIMIT = 0.6
_NAME_RE = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class DefectRequest:
    """One point defect to study, as a spec entry describes it.

    ``element``: vacancy — the removed element; substitution — the new element;
    interstitial — the added element. ``site``: substitution only, the replaced host
    element. ``frac_coords``: interstitial only, fractional coordinates of the host
    supercell. ``site_index``: vacancy/substitution only, which host-supercell atom
    (default: the first atom of that element). ``charges``: ``None`` means doped's guess.
    ``name``: overrides the doped-style name (needed when two requests share one).
    """

    kind: str
    element: str
    site: str | None = None
    frac_coords: tuple[float, float, float] | None = None
    charges: tuple[int, ...] | None = None
    site_index: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"defect kind {self.kind!r} is not one of {list(KINDS)}")
        _check_element(self.element, "element")
        if self.kind == "substitution":
            if self.site is None:
                raise ValueError(f"substitution {self.element}: set `site` to the host element it replaces")
            _check_element(self.site, "site")
            if self.site == self.element:
                raise ValueError(f"substitution of {self.element} on its own site changes nothing")
        elif self.site is not None:
            raise ValueError(f"`site` is for substitutions only (got site={self.site!r} for a {self.kind})")
        if self.kind == "interstitial":
            if self.frac_coords is None:
                raise ValueError(
                    f"interstitial {self.element}: set `frac_coords` (fractional coordinates of the supercell)"
                )
            coords = tuple(float(x) for x in self.frac_coords)
            if len(coords) != 3 or not all(np.isfinite(coords)):
                raise ValueError(f"frac_coords must be three finite numbers, got {self.frac_coords!r}")
            object.__setattr__(self, "frac_coords", coords)
            if self.site_index is not None:
                raise ValueError("`site_index` is for vacancies and substitutions; interstitials use `frac_coords`")
        elif self.frac_coords is not None:
            raise ValueError(f"`frac_coords` is for interstitials only (got it for a {self.kind})")
        if self.site_index is not None and (
            not isinstance(self.site_index, numbers.Integral) or isinstance(self.site_index, bool) or self.site_index < 0
        ):
            raise ValueError(f"site_index must be a non-negative integer, got {self.site_index!r}")
        if self.charges is not None:
            object.__setattr__(self, "charges", _check_charges(self.charges))
        if self.name is not None and not _NAME_RE.match(self.name):
            raise ValueError(f"defect name {self.name!r} may hold only letters, digits, '_' and '.'")

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "element": self.element,
            "site": self.site,
            "frac_coords": list(self.frac_coords) if self.frac_coords is not None else None,
            "charges": list(self.charges) if self.charges is not None else None,
            "site_index": self.site_index,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DefectRequest:
        data = dict(data)
        for key in ("frac_coords", "charges"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass
class Seed:
    """A starting structure for exploration: one defect, charge and distortion."""

    defect: str
    charge: int
    multiplicity: int
    distortion: str  # "Bond_Distortion_-30.0%", "Unperturbed", "Dimer", "Rattled"
    atoms: Atoms
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return charged_name(self.defect, self.charge)

    def as_dict(self) -> dict[str, Any]:
        return {
            "defect": self.defect,
            "charge": self.charge,
            "multiplicity": self.multiplicity,
            "distortion": self.distortion,
            "atoms": {
                "numbers": self.atoms.numbers.tolist(),
                "positions": self.atoms.positions.tolist(),
                "cell": np.asarray(self.atoms.cell).tolist(),
                "pbc": self.atoms.pbc.tolist(),
            },
            "metadata": _jsonable(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seed:
        a = data["atoms"]
        atoms = Atoms(numbers=a["numbers"], positions=a["positions"], cell=a["cell"], pbc=a["pbc"])
        atoms.info.update(
            _seed_info(data["defect"], int(data["charge"]), int(data["multiplicity"]), data["distortion"])
        )
        return cls(
            defect=data["defect"],
            charge=int(data["charge"]),
            multiplicity=int(data["multiplicity"]),
            distortion=data["distortion"],
            atoms=atoms,
            metadata=dict(data.get("metadata", {})),
        )


def bundled_structure(name: str) -> Path:
    """Path of a host cell shipped with the package, e.g. ``bundled_structure("SiC_conv")``.

    Each file's first line says where its lattice constant comes from.
    """
    from importlib.resources import files

    folder = Path(str(files("activedefect") / "data" / "structures"))
    path = folder / (name if name.endswith(".vasp") else f"{name}.vasp")
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.vasp"))
        raise FileNotFoundError(f"no bundled structure {name!r}; available: {available}")
    return path


def load_host(path: str | Path, supercell: Any = (1, 1, 1)) -> Structure:
    """Read a host cell (any format pymatgen or ASE reads) and return its supercell.

    ``supercell``: three integers (diagonal) or a 3x3 integer matrix; e.g.
    ``[[0, 1, 1], [1, 0, 1], [1, 1, 0]]`` turns an 8-atom conventional zincblende cell
    into the 16-atom 2x2x2 primitive-fcc supercell. Use at least 16 atoms: ShakeNBreak's
    Monte Carlo rattle keeps retrying in 8-atom cells (~30 s per vacancy vs 0.3 s at 16).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"host structure file {path} does not exist")
    try:
        structure = Structure.from_file(path)
    except Exception as pmg_error:  # noqa: BLE001 - fall back to ASE's readers
        structure = _read_with_ase(path, pmg_error)
    if not structure.is_ordered:
        raise ValueError(f"host structure {path} has partial occupancies; give an ordered cell")
    _check_no_overlap(structure, path)
    structure.remove_oxidation_states()
    structure = Structure(structure.lattice, [s.specie for s in structure], structure.frac_coords)
    return structure.make_supercell(_supercell_matrix(supercell), in_place=False)


def _read_with_ase(path: Path, pmg_error: Exception) -> Structure:
    """A host file pymatgen cannot read (e.g. extxyz), read by ASE; it must be a 3D crystal."""
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        atoms = read(path)
    except Exception as ase_error:  # noqa: BLE001
        raise ValueError(
            f"cannot read host structure {path}: pymatgen said {pmg_error!r}; ASE said {ase_error!r}"
        ) from ase_error
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise ValueError(
            f"host structure {path} is not a periodic crystal (pbc {atoms.pbc.tolist()}, cell rank "
            f"{atoms.cell.rank}); give a cell periodic in 3D, e.g. POSCAR, CIF, or extxyz with "
            'Lattice= and pbc="T T T"'
        )
    return AseAtomsAdaptor.get_structure(atoms)


def _check_no_overlap(structure: Structure, path: Path) -> None:
    """Refuse atoms closer than :data:`MIN_HOST_DISTANCE_A` (periodic images included):
    a duplicated or misplaced atom, which no oracle can label."""
    distances = structure.distance_matrix + np.diag(np.full(len(structure), np.inf))
    i, j = np.unravel_index(np.argmin(distances), distances.shape)
    if distances[i, j] < MIN_HOST_DISTANCE_A:
        raise ValueError(
            f"host structure {path}: atoms {i} ({structure[i].specie}) and {j} ({structure[j].specie}) are "
            f"{distances[i, j]:.2f} Å apart (overlapping); atoms must be >= {MIN_HOST_DISTANCE_A} Å apart"
        )


def defect_name(req: DefectRequest) -> str:
    """doped-style name without charge: ``v_Si``, ``Al_Si``, ``C_i`` (or ``req.name``)."""
    if req.name is not None:
        return req.name
    if req.kind == "vacancy":
        return f"v_{req.element}"
    if req.kind == "substitution":
        return f"{req.element}_{req.site}"
    return f"{req.element}_i"


def charged_name(defect: str, charge: int) -> str:
    """``v_Si_-1``, ``v_Si_0``, ``v_Si_+1`` (doped/ShakeNBreak convention)."""
    return f"{defect}_{format_charge(charge)}"


def split_charged_name(name: str) -> tuple[str, int]:
    """Inverse of ``charged_name``: ``"v_Si_-1"`` -> ``("v_Si", -1)``."""
    defect, _, charge = name.rpartition("_")
    if not defect or not re.fullmatch(r"[+-]?\d+", charge) or (charge != "0" and charge[0] not in "+-"):
        raise ValueError(f"{name!r} is not a charged defect name like 'v_Si_-1', 'v_Si_0' or 'v_Si_+1'")
    return defect, int(charge)


def multiplicity_from_electrons(atoms: Atoms, charge: int) -> int:
    """Lowest spin multiplicity for ``sum(Z) - charge`` electrons: 1 if even, 2 if odd."""
    electrons = int(np.sum(atoms.numbers)) - int(charge)
    if electrons < 0:
        raise ValueError(f"charge {charge:+d} removes more electrons than the cell has ({int(np.sum(atoms.numbers))})")
    return 1 if electrons % 2 == 0 else 2


def host_oxidation_states(
    host: Structure, requests: Sequence[DefectRequest] = (), oxidation_states: dict[str, int] | None = None
) -> dict[str, int]:
    """Oxidation states of the host elements and of every extrinsic defect element.

    Given values win; the rest are guessed as ShakeNBreak does (doped's guess for the
    host, the most common oxidation state for extrinsic elements). ShakeNBreak uses
    them to decide how many neighbours to distort.
    """
    from doped.core import guess_and_set_oxi_states_with_timeout, most_common_oxi

    states = {str(k): int(v) for k, v in (oxidation_states or {}).items()}
    host_elements = [el.symbol for el in host.composition.elements]
    missing = [el for el in host_elements if el not in states]
    if missing:
        guessed = guess_and_set_oxi_states_with_timeout(host.copy(), break_early_if_expensive=True)
        if guessed is None:
            raise ValueError(
                f"cannot guess oxidation states for host {host.composition.reduced_formula}; "
                f"pass oxidation_states for {missing}"
            )
        for el in missing:
            values = [site.specie.oxi_state for site in guessed if site.specie.symbol == el]
            states[el] = int(round(float(np.mean(values))))
    for req in requests:
        if req.element not in states:
            states[req.element] = int(most_common_oxi(req.element))
    return states


def _guessed_charges(defect) -> tuple[int, ...]:
    from doped.generation import guess_defect_charge_states

    return tuple(int(q) for q in guess_defect_charge_states(defect))


def validate_distortion_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Check the spec's distortion options; return them with ShakeNBreak's defaults filled in."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(DISTORTION_OPTIONS))
    if unknown:
        raise ValueError(f"unknown distortion option(s) {unknown}; accepted: {list(DISTORTION_OPTIONS)}")
    if "bond_distortions" in options and "distortion_increment" in options:
        raise ValueError("give either `bond_distortions` or `distortion_increment`, not both")
    if "bond_distortions" in options:
        values = options["bond_distortions"]
        if isinstance(values, (str, bytes)) or not values or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(
                f"bond_distortions must be a non-empty list of fractions like [-0.3, 0.0, 0.3], got {values!r}"
                " (the dimer seed is switched by the `dimer` option)"
            )
        if any(v <= -1 for v in values):
            raise ValueError(f"bond_distortions must be > -1 (a -100 % bond has zero length), got {values!r}")
        options["bond_distortions"] = [round(float(v), 3) for v in values]
    else:
        increment = options.pop("distortion_increment", 0.1)
        if not isinstance(increment, numbers.Real) or isinstance(increment, bool) or not 0 < increment <= 0.6:
            raise ValueError(f"distortion_increment must be in (0, 0.6], got {increment!r}")
        steps = np.around(np.arange(0, _DEFAULT_BOND_DISTORTION_LIMIT + 1e-3, float(increment)), 3)
        options["bond_distortions"] = [float(-v) for v in steps[::-1][:-1]] + [float(v) for v in steps]
    options.setdefault("dimer", True)
    options.setdefault("local_rattle", False)
    for key in ("dimer", "local_rattle"):
        if not isinstance(options[key], bool):
            raise ValueError(f"distortion option {key} must be true or false, got {options[key]!r}")
    for key in ("dimer_bond_length", "d_min", "max_disp", "nbr_cutoff", "width"):
        if key in options and not _positive_real(options[key]):
            raise ValueError(f"distortion option {key} must be a positive number (Å), got {options[key]!r}")
    if "stdev" in options and not (_positive_real(options["stdev"]) or options["stdev"] == 0):
        raise ValueError(f"distortion option stdev must be >= 0 Å, got {options['stdev']!r}")
    for key in ("n_iter", "max_attempts"):
        if key in options and not _positive_int(options[key]):
            raise ValueError(f"distortion option {key} must be a positive integer, got {options[key]!r}")
    if "seed" in options and not _positive_int(options["seed"]):
        raise ValueError(
            f"distortion option seed must be an integer >= 1, got {options['seed']!r} "
            "(ShakeNBreak treats 0 as 'use the default seeds'; omit seed for that)"
        )
    distorted = options.get("distorted_elements")
    if distorted is not None:
        if not isinstance(distorted, dict):
            raise ValueError("distorted_elements must map defect names to an element or a list of elements")
        for name, els in distorted.items():
            for el in [els] if isinstance(els, str) else list(els):
                _check_element(el, f"distorted_elements[{name!r}]")
    return options


def build_seeds(
    host: Structure,
    requests: list[DefectRequest],
    *,
    oxidation_states: dict[str, int] | None = None,
    distortion_options: dict[str, Any] | None = None,
    multiplicity_overrides: dict[str, int] | None = None,
) -> list[Seed]:
    """ShakeNBreak seeds for every request x charge state, in a deterministic order.

    Per charge state: ``Unperturbed``, then ShakeNBreak's distortions in its order
    (bond distortions, or ``Rattled`` where no neighbour is distorted, i.e. closed
    shell; ``Dimer`` for vacancies). Same inputs give identical positions.
    ``multiplicity_overrides`` maps charged names (``"v_Si_-1"``) to 2S+1.
    """
    if not requests:
        raise ValueError("no defect requests given")
    options = validate_distortion_options(distortion_options)
    names = [defect_name(r) for r in requests]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"several requests are named {duplicates}; give each a distinct `name`")
    for req in requests:
        check_against_host(req, host)
    distorted = options.pop("distorted_elements", None) or {}
    unknown = sorted(set(distorted) - set(names))
    if unknown:
        raise ValueError(f"distorted_elements names unknown defect(s) {unknown}; defects: {names}")
    states = host_oxidation_states(host, requests, oxidation_states)
    decorated = _decorated(host, states)

    seeds: list[Seed] = []
    for req, name in zip(requests, names):
        with _quiet() as caught:
            defect = _doped_defect(req, decorated, states)
            charges = req.charges if req.charges is not None else _guessed_charges(defect)
            new = _seeds_for_defect(req, name, defect, charges, states, options, distorted.get(name))
        for seed in new:
            seed.metadata["warnings"] = list(caught)
        seeds.extend(new)

    _apply_multiplicity_overrides(seeds, multiplicity_overrides or {})
    return seeds


def _seeds_for_defect(req, name, defect, charges, states, options, distorted_element) -> list[Seed]:
    """ShakeNBreak's structures for one defect in all its charge states (call inside ``_quiet``)."""
    from doped.generation import get_defect_entry_from_defect
    from shakenbreak.input import Distortions

    entries = []
    for q in charges:
        entry = get_defect_entry_from_defect(
            defect, defect.defect_structure, int(q), sc_defect_frac_coords=defect.site.frac_coords
        )
        entry.name = charged_name(name, q)
        entries.append(entry)
    bond_distortions = list(options["bond_distortions"])
    if req.kind == "vacancy" and options["dimer"]:
        bond_distortions.append("Dimer")
    rattle_kwargs = {k: options[k] for k in ("stdev", "d_min", "seed", "n_iter", "max_attempts", "max_disp",
                                              "nbr_cutoff", "width") if k in options}
    distortions = Distortions(
        entries,
        oxidation_states=dict(states),
        bond_distortions=bond_distortions,
        local_rattle=options["local_rattle"],
        distorted_elements={name: distorted_element} if distorted_element else None,
        dimer_bond_length=options.get("dimer_bond_length"),
        **rattle_kwargs,
    )
    structures, snb_metadata = distortions.apply_distortions(verbose=False)
    info = snb_metadata["defects"][name]
    bulk_index = None if req.kind == "interstitial" else int(defect.defect_site_index)
    seeds = []
    for q in charges:
        charge_info = info["charges"][int(q)]
        snb = structures[name]["charges"][int(q)]["structures"]
        expected = _expected_distortion_names(bond_distortions, charge_info["num_nearest_neighbours"])
        metadata = {
            "kind": req.kind,
            "defect_frac_coords": [float(x) for x in info["unique_site"]],
            "bulk_site_index": bulk_index,
            "defect_site_index": info.get("defect_site_index"),
            "num_nearest_neighbours": int(charge_info["num_nearest_neighbours"]),
            "distorted_atoms": charge_info["distorted_atoms"],
            "stdev_A": float(distortions.stdev),
            "oxidation_states": dict(states),
            "omitted_distortions": [d for d in expected if d not in snb["distortions"]],
        }
        ordered = [("Unperturbed", snb["Unperturbed"]), *snb["distortions"].items()]
        for label, structure in ordered:
            atoms = _to_atoms(structure)
            multiplicity = multiplicity_from_electrons(atoms, q)
            atoms.info.update(_seed_info(name, int(q), multiplicity, label))
            seeds.append(Seed(name, int(q), multiplicity, label, atoms, _jsonable(metadata)))
    return seeds


def _apply_multiplicity_overrides(seeds: list[Seed], overrides: dict[str, int]) -> None:
    by_name: dict[str, list[Seed]] = {}
    for seed in seeds:
        by_name.setdefault(seed.name, []).append(seed)
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise ValueError(f"multiplicity override(s) for {unknown} match no seed; charged defects: {sorted(by_name)}")
    for key, m in overrides.items():
        group = by_name[key]
        electrons = int(np.sum(group[0].atoms.numbers)) - group[0].charge
        if not _positive_int(m) or (m - 1) % 2 != electrons % 2 or m > electrons + 1:
            parity = "an odd multiplicity (1, 3, 5, ...)" if electrons % 2 == 0 else "an even multiplicity (2, 4, ...)"
            raise ValueError(f"multiplicity override {key}={m!r} is impossible: {electrons} electrons need {parity}")
        for seed in group:
            seed.multiplicity = int(m)
            seed.atoms.info[SPIN_KEY] = int(m)


def check_against_host(req: DefectRequest, host: Structure) -> None:
    """Raise ValueError when the host cannot hold the defect (element absent, site out of
    range, interstitial on top of an atom)."""
    elements = sorted(el.symbol for el in host.composition.elements)
    replaced = req.element if req.kind == "vacancy" else req.site
    if req.kind != "interstitial":
        if replaced not in elements:
            raise ValueError(
                f"{req.kind} {defect_name(req)}: the host has no {replaced}; host elements: {elements}"
            )
        if req.site_index is not None:
            if req.site_index >= len(host):
                raise ValueError(f"site_index {req.site_index} is out of range for a {len(host)}-atom host")
            found = host[req.site_index].specie.symbol
            if found != replaced:
                raise ValueError(
                    f"{defect_name(req)}: host atom {req.site_index} is {found}, not {replaced}; "
                    f"{replaced} atoms are {[i for i, s in enumerate(host) if s.specie.symbol == replaced][:12]}..."
                )
        return
    site = PeriodicSite(req.element, req.frac_coords, host.lattice)
    distances = [site.distance(other) for other in host]
    closest = int(np.argmin(distances))
    if distances[closest] < MIN_INTERSTITIAL_DISTANCE_A:
        raise ValueError(
            f"interstitial {defect_name(req)} at {list(req.frac_coords)} (supercell fractional coordinates) "
            f"lies {distances[closest]:.2f} Å from host atom {closest} ({host[closest].specie.symbol}); "
            f"interstitials must be >= {MIN_INTERSTITIAL_DISTANCE_A} Å from every atom"
        )


def _doped_defect(req: DefectRequest, decorated: Structure, states: dict[str, int]):
    """doped ``Defect`` in the supercell itself, so its defect structure is the supercell."""
    from doped.core import Interstitial, Substitution, Vacancy

    if req.kind == "interstitial":
        site = PeriodicSite(Species(req.element, states[req.element]), req.frac_coords, decorated.lattice)
        return Interstitial(decorated, site)
    replaced = req.element if req.kind == "vacancy" else req.site
    index = req.site_index
    if index is None:
        index = next(i for i, s in enumerate(decorated) if s.specie.symbol == replaced)
    if req.kind == "vacancy":
        return Vacancy(decorated, decorated[index])
    site = PeriodicSite(Species(req.element, states[req.element]), decorated[index].frac_coords, decorated.lattice)
    return Substitution(decorated, site)


def _decorated(host: Structure, states: dict[str, int]) -> Structure:
    decorated = host.copy()
    decorated.remove_oxidation_states()
    decorated.add_oxidation_state_by_element({el.symbol: states[el.symbol] for el in host.composition.elements})
    return decorated


def _expected_distortion_names(bond_distortions: list, num_neighbours: int) -> list[str]:
    from shakenbreak.analysis import _get_distortion_filename  # ShakeNBreak's own labels

    dimer = ["Dimer"] if "Dimer" in bond_distortions else []
    if num_neighbours == 0:
        return ["Rattled", *dimer]
    return [_get_distortion_filename(d) for d in bond_distortions if d != "Dimer"] + dimer


def _to_atoms(structure: Structure) -> Atoms:
    return Atoms(
        numbers=[site.specie.Z for site in structure],
        positions=structure.cart_coords,
        cell=structure.lattice.matrix,
        pbc=True,
    )


def _seed_info(defect: str, charge: int, multiplicity: int, distortion: str) -> dict[str, Any]:
    return {
        CHARGE_KEY: charge,
        SPIN_KEY: multiplicity,
        DEFECT_KEY: defect,
        "origin": {"seed": distortion, "generation": 0, "trajectory": -1, "step": 0},
    }


@contextlib.contextmanager
def _quiet():
    """Silence doped's and ShakeNBreak's output; collect their warnings (seed metadata).

    Swaps sys.stdout/stderr briefly: call it from the driver, not from threads that print.
    """
    caught: list[str] = []
    sink = io.StringIO()
    with warnings.catch_warnings(record=True) as records, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(
        sink
    ):
        warnings.simplefilter("always")
        yield caught
    caught.extend(sorted({str(r.message) for r in records}))


def _supercell_matrix(supercell: Any) -> np.ndarray:
    matrix = np.asarray(supercell)
    if matrix.shape == (3,):
        matrix = np.diag(matrix)
    if matrix.shape != (3, 3) or not np.all(np.equal(np.mod(matrix, 1), 0)):
        raise ValueError(f"supercell must be three integers or a 3x3 integer matrix, got {supercell!r}")
    matrix = matrix.astype(int)
    if round(np.linalg.det(matrix)) <= 0:
        raise ValueError(f"supercell matrix {matrix.tolist()} must have a positive determinant")
    return matrix


def _check_element(symbol: Any, what: str) -> None:
    if not isinstance(symbol, str) or not Element.is_valid_symbol(symbol):
        raise ValueError(f"{what}={symbol!r} is not a chemical element symbol (e.g. 'Si', 'C', 'Al')")


def _check_charges(charges: Any) -> tuple[int, ...]:
    values = tuple(charges) if not isinstance(charges, (str, bytes)) else (charges,)
    bad = [q for q in values if not isinstance(q, numbers.Integral) or isinstance(q, bool)]
    if bad or not values:
        raise ValueError(f"charges must be a non-empty list of integers, got {charges!r}")
    values = tuple(int(q) for q in values)
    if len(set(values)) != len(values):
        raise ValueError(f"charges {list(values)} repeat a charge state")
    return values


def _positive_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _jsonable(value: Any) -> Any:
    """Plain Python types (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
