"""Defect requests and seeds, and the names that key them in the store.

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

import numbers
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.core import Element

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY, format_charge

KINDS = ("vacancy", "substitution", "interstitial")
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
        check_element(self.element, "element")
        if self.kind == "substitution":
            if self.site is None:
                raise ValueError(f"substitution {self.element}: set `site` to the host element it replaces")
            check_element(self.site, "site")
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
            "metadata": jsonable(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seed:
        a = data["atoms"]
        atoms = Atoms(numbers=a["numbers"], positions=a["positions"], cell=a["cell"], pbc=a["pbc"])
        atoms.info.update(
            seed_info(data["defect"], int(data["charge"]), int(data["multiplicity"]), data["distortion"])
        )
        return cls(
            defect=data["defect"],
            charge=int(data["charge"]),
            multiplicity=int(data["multiplicity"]),
            distortion=data["distortion"],
            atoms=atoms,
            metadata=dict(data.get("metadata", {})),
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


def seed_info(defect: str, charge: int, multiplicity: int, distortion: str) -> dict[str, Any]:
    return {
        CHARGE_KEY: charge,
        SPIN_KEY: multiplicity,
        DEFECT_KEY: defect,
        "origin": {"seed": distortion, "generation": 0, "trajectory": -1, "step": 0},
    }


def check_element(symbol: Any, what: str) -> None:
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


def jsonable(value: Any) -> Any:
    """Plain Python types (numpy scalars and arrays become numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value
