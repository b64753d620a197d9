"""Defect supercells and ShakeNBreak seeds: one seed per defect x charge x distortion.

The host is a supercell (``load_host``); every request names a defect in it, and
ShakeNBreak's ``Distortions`` makes the bond-distorted, dimer, rattled and unperturbed
structures exactly as a ShakeNBreak user would get them, so a campaign's seeds can be
compared with a brute-force ShakeNBreak search one to one. Names and multiplicities
follow the conventions in :mod:`activedefect.seeds.defects`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.core import PeriodicSite, Species, Structure

from activedefect.geometry import SPIN_KEY
from activedefect.seeds.defects import (
    DefectRequest,
    Seed,
    charged_name,
    defect_name,
    jsonable,
    multiplicity_from_electrons,
    seed_info,
)
from activedefect.seeds.distortion_options import (
    positive_int,
    validate_distortion_options,
)

#: An interstitial closer than this to a host atom is a typo, not a defect.
MIN_INTERSTITIAL_DISTANCE_A = 0.7


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
            atoms.info.update(seed_info(name, int(q), multiplicity, label))
            seeds.append(Seed(name, int(q), multiplicity, label, atoms, jsonable(metadata)))
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
        if not positive_int(m) or (m - 1) % 2 != electrons % 2 or m > electrons + 1:
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
    from shakenbreak.analysis import (
        _get_distortion_filename,  # ShakeNBreak's own labels
    )

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

