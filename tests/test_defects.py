"""Defect seeds from real ShakeNBreak/doped on 3C-SiC (16-atom cells unless stated)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.io import write
from pymatgen.io.ase import AseAtomsAdaptor

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY
from activedefect.seeds.builder import build_seeds
from activedefect.seeds.defects import (
    DefectRequest,
    Seed,
    charged_name,
    defect_name,
    multiplicity_from_electrons,
    split_charged_name,
)
from activedefect.seeds.distortion_options import (
    DISTORTION_OPTIONS,
    validate_distortion_options,
)
from activedefect.seeds.host import bundled_structure, load_host

FCC_2X2X2 = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]  # conventional zincblende -> 16-atom supercell
OXI = {"Si": 4, "C": -4}
BOND = [f"Bond_Distortion_{d:.1f}%" for d in range(-60, 70, 10)]


@pytest.fixture(scope="module")
def sic16():
    return load_host(bundled_structure("SiC_conv"), FCC_2X2X2)


@pytest.fixture(scope="module")
def tetrahedral_site(sic16):
    """Empty tetrahedral site (conventional (3/4, 3/4, 3/4)) in supercell fractional coordinates."""
    a = 4.485
    return tuple(sic16.lattice.get_fractional_coords([0.75 * a] * 3))


def by_name(seeds):
    out: dict[str, list[Seed]] = {}
    for s in seeds:
        out.setdefault(s.name, []).append(s)
    return out


def test_bundled_hosts_and_supercells(tmp_path):
    path = bundled_structure("SiC_conv")
    assert len(load_host(path, [1, 1, 1])) == 8
    sc16 = load_host(path, FCC_2X2X2)
    assert len(sc16) == 16 and sc16.composition.reduced_formula == "SiC"
    assert len(load_host(path, [2, 2, 2])) == 64
    assert np.isclose(load_host(bundled_structure("C_diamond_conv")).lattice.a, 3.549)
    assert np.isclose(load_host(bundled_structure("Si_conv")).lattice.a, 5.621)
    # a format only ASE reads (extxyz) goes through the fallback and gives the same cell
    xyz = tmp_path / "sic.extxyz"
    write(xyz, AseAtomsAdaptor.get_atoms(sc16), format="extxyz")
    again = load_host(xyz)
    assert np.allclose(again.cart_coords, sc16.cart_coords) and again.composition == sc16.composition
    with pytest.raises(ValueError, match="3x3 integer matrix"):
        load_host(path, [1.5, 1, 1])
    with pytest.raises(ValueError, match="positive determinant"):
        load_host(path, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    with pytest.raises(FileNotFoundError, match="SiC_conv"):
        bundled_structure("GaN")


def test_names_follow_doped():
    assert defect_name(DefectRequest("vacancy", "Si")) == "v_Si"
    assert defect_name(DefectRequest("substitution", "Al", site="Si")) == "Al_Si"
    assert defect_name(DefectRequest("interstitial", "C", frac_coords=(0.1, 0.2, 0.3))) == "C_i"
    assert defect_name(DefectRequest("interstitial", "C", frac_coords=(0.1, 0.2, 0.3), name="C_i_T")) == "C_i_T"
    assert [charged_name("v_Si", q) for q in (-1, 0, 1)] == ["v_Si_-1", "v_Si_0", "v_Si_+1"]
    assert split_charged_name("Al_Si_-1") == ("Al_Si", -1)
    assert split_charged_name("v_Si_+2") == ("v_Si", 2)
    with pytest.raises(ValueError, match="charged defect name"):
        split_charged_name("v_Si_2")


def test_vacancy_seeds(sic16):
    seeds = build_seeds(sic16, [DefectRequest("vacancy", "Si", charges=(-1, 0, 1, -4))], oxidation_states=OXI)
    groups = by_name(seeds)
    assert list(groups) == ["v_Si_-1", "v_Si_0", "v_Si_+1", "v_Si_-4"]
    open_shell = ["Unperturbed", *BOND, "Dimer"]
    for name in ("v_Si_-1", "v_Si_0", "v_Si_+1"):
        assert [s.distortion for s in groups[name]] == open_shell
    # fully ionised V_Si^4- is closed shell: ShakeNBreak only rattles (plus the dimer)
    assert [s.distortion for s in groups["v_Si_-4"]] == ["Unperturbed", "Rattled", "Dimer"]
    # 8 Si (Z=14) + 8 C (Z=6) - one Si = 146 electrons, minus the charge
    assert {n: g[0].multiplicity for n, g in groups.items()} == {"v_Si_-1": 2, "v_Si_0": 1, "v_Si_+1": 2, "v_Si_-4": 1}
    assert {n: g[0].metadata["num_nearest_neighbours"] for n, g in groups.items()} == {
        "v_Si_-1": 3, "v_Si_0": 4, "v_Si_+1": 3, "v_Si_-4": 0,
    }
    for s in seeds:
        assert len(s.atoms) == 15 and s.atoms.get_chemical_formula() == "C8Si7"
        assert s.atoms.info[CHARGE_KEY] == s.charge and s.atoms.info[SPIN_KEY] == s.multiplicity
        assert s.atoms.info[DEFECT_KEY] == "v_Si"
        assert s.atoms.info["origin"] == {"seed": s.distortion, "generation": 0, "trajectory": -1, "step": 0}
    # the unperturbed seed is the host with atom 0 removed, positions untouched
    unperturbed = groups["v_Si_0"][0]
    assert np.allclose(unperturbed.atoms.positions, sic16.cart_coords[1:])
    # a -30 % seed really pulls the four C neighbours to 70 % of the Si-C bond (1.942 Å)
    seed = next(s for s in groups["v_Si_0"] if s.distortion == "Bond_Distortion_-30.0%")
    vacancy = sic16[0].coords
    for index, element in seed.metadata["distorted_atoms"]:
        assert element == "C"
        r = np.linalg.norm(_mic(seed.atoms, seed.atoms.positions[index] - vacancy))
        assert r == pytest.approx(0.7 * 1.942, abs=0.02), (index, r)


def _mic(atoms, vector):
    frac = np.linalg.solve(np.asarray(atoms.cell).T, vector)
    return (frac - np.round(frac)) @ np.asarray(atoms.cell)


def test_carbon_vacancy_and_substitution(sic16):
    requests = [DefectRequest("vacancy", "C", charges=(0, 2)), DefectRequest("substitution", "Al", site="Si", charges=(-1, 0))]
    groups = by_name(build_seeds(sic16, requests, oxidation_states={**OXI, "Al": 3}))
    assert list(groups) == ["v_C_0", "v_C_+2", "Al_Si_-1", "Al_Si_0"]
    assert groups["v_C_0"][-1].distortion == "Dimer" and len(groups["v_C_0"]) == 15
    assert groups["v_C_+2"][0].metadata["num_nearest_neighbours"] == 2
    # Al_Si^- is isoelectronic with Si: closed shell, rattle only, and no dimer for substitutions
    assert [s.distortion for s in groups["Al_Si_-1"]] == ["Unperturbed", "Rattled"]
    al0 = groups["Al_Si_0"]
    assert al0[0].multiplicity == 2 and al0[0].metadata["num_nearest_neighbours"] == 1
    # pulling the one distorted C to 0.78 or 0.97 Å from Al is what ShakeNBreak drops (< 1 Å)
    assert al0[0].metadata["omitted_distortions"] == ["Bond_Distortion_-60.0%", "Bond_Distortion_-50.0%"]
    assert [s.distortion for s in al0] == ["Unperturbed", *BOND[2:]]
    assert al0[0].atoms.get_chemical_symbols()[al0[0].metadata["defect_site_index"]] == "Al"


def test_interstitial(sic16, tetrahedral_site):
    # full default set on a 16-atom cell takes ShakeNBreak's rattle ~1 min; three distortions suffice here
    opts = {"bond_distortions": [-0.6, -0.2, 0.2]}
    req = DefectRequest("interstitial", "C", frac_coords=tetrahedral_site, charges=(0, 1))
    groups = by_name(build_seeds(sic16, [req], oxidation_states=OXI, distortion_options=opts))
    ci = groups["C_i_0"]
    assert len(ci[0].atoms) == 17 and ci[0].metadata["defect_site_index"] == 0  # the new C comes first
    assert np.allclose(ci[0].atoms.get_scaled_positions()[0], tetrahedral_site)
    assert [ci[0].multiplicity, groups["C_i_+1"][0].multiplicity] == [1, 2]  # 166 and 165 electrons
    # ShakeNBreak drops distortions that put atoms < 1 Å apart; the metadata says which
    assert [s.distortion for s in ci] == ["Unperturbed", "Bond_Distortion_-20.0%", "Bond_Distortion_20.0%"]
    assert ci[0].metadata["omitted_distortions"] == ["Bond_Distortion_-60.0%"]


def test_default_charges_are_dopeds_guess(sic16):
    req = DefectRequest("vacancy", "Si")
    seeds = build_seeds(sic16, [req], oxidation_states=OXI, distortion_options={"bond_distortions": [0.0]})
    assert sorted({s.charge for s in seeds}) == [-4, -3, -2, -1, 0, 1]


def test_seeds_are_deterministic_and_seed_matters(sic16):
    req = [DefectRequest("vacancy", "Si", charges=(0,))]
    opts = {"bond_distortions": [-0.3, 0.3]}
    first = build_seeds(sic16, req, oxidation_states=OXI, distortion_options=opts)
    second = build_seeds(sic16, req, oxidation_states=OXI, distortion_options=opts)
    assert [s.distortion for s in first] == ["Unperturbed", "Bond_Distortion_-30.0%", "Bond_Distortion_30.0%", "Dimer"]
    for a, b in zip(first, second):
        assert np.array_equal(a.atoms.positions, b.atoms.positions)
    reseeded = build_seeds(sic16, req, oxidation_states=OXI, distortion_options={**opts, "seed": 7})
    assert not np.allclose(first[1].atoms.positions, reseeded[1].atoms.positions)


def test_distortion_options(sic16):
    req = [DefectRequest("vacancy", "Si", charges=(0,))]
    coarse = build_seeds(sic16, req, oxidation_states=OXI, distortion_options={"distortion_increment": 0.3})
    assert [s.distortion for s in coarse] == [
        "Unperturbed", "Bond_Distortion_-60.0%", "Bond_Distortion_-30.0%", "Bond_Distortion_0.0%",
        "Bond_Distortion_30.0%", "Bond_Distortion_60.0%", "Dimer",
    ]
    no_dimer = build_seeds(sic16, req, oxidation_states=OXI, distortion_options={"bond_distortions": [0.2], "dimer": False})
    assert [s.distortion for s in no_dimer] == ["Unperturbed", "Bond_Distortion_20.0%"]
    calm = build_seeds(sic16, req, oxidation_states=OXI, distortion_options={"bond_distortions": [0.0], "stdev": 0.0})
    assert np.allclose(calm[1].atoms.positions, calm[0].atoms.positions)  # no rattle, no distortion
    assert calm[0].metadata["stdev_A"] == 0.0
    second_shell = build_seeds(
        sic16, req, oxidation_states=OXI, distortion_options={"bond_distortions": [0.2], "distorted_elements": {"v_Si": "Si"}}
    )
    assert {el for _, el in second_shell[1].metadata["distorted_atoms"]} == {"Si"}
    with pytest.raises(ValueError, match=r"unknown distortion option\(s\) \['stdv'\]") as err:
        validate_distortion_options({"stdv": 0.1})
    assert all(key in str(err.value) for key in DISTORTION_OPTIONS)
    with pytest.raises(ValueError, match="not both"):
        validate_distortion_options({"bond_distortions": [0.1], "distortion_increment": 0.2})
    with pytest.raises(ValueError, match="seed"):
        validate_distortion_options({"seed": 0})
    with pytest.raises(ValueError, match="dimer"):
        validate_distortion_options({"bond_distortions": [0.1, "Dimer"]})
    with pytest.raises(ValueError, match="distortion_increment"):
        validate_distortion_options({"distortion_increment": 0.0})
    with pytest.raises(ValueError, match=r"distorted_elements names unknown defect\(s\) \['v_C'\]"):
        build_seeds(sic16, req, oxidation_states=OXI, distortion_options={"distorted_elements": {"v_C": "Si"}})


def test_request_validation(sic16):
    with pytest.raises(ValueError, match=r"no Ga; host elements: \['C', 'Si'\]"):
        build_seeds(sic16, [DefectRequest("vacancy", "Ga", charges=(0,))], oxidation_states=OXI)
    with pytest.raises(ValueError, match=r"no Ga; host elements: \['C', 'Si'\]"):
        build_seeds(sic16, [DefectRequest("substitution", "Al", site="Ga", charges=(0,))], oxidation_states=OXI)
    with pytest.raises(ValueError, match="'Xx' is not a chemical element"):
        DefectRequest("vacancy", "Xx")
    with pytest.raises(ValueError, match="lies 0.00 Å from host atom 0"):
        build_seeds(sic16, [DefectRequest("interstitial", "C", frac_coords=(0, 0, 0), charges=(0,))])
    for bad in ((0.5,), (True,), ("1",), (0, 0)):
        with pytest.raises(ValueError, match="charge"):
            DefectRequest("vacancy", "Si", charges=bad)
    with pytest.raises(ValueError, match="set `site`"):
        DefectRequest("substitution", "Al")
    with pytest.raises(ValueError, match="set `frac_coords`"):
        DefectRequest("interstitial", "C")
    with pytest.raises(ValueError, match="host atom 8 is C, not Si"):
        build_seeds(sic16, [DefectRequest("vacancy", "Si", site_index=8, charges=(0,))], oxidation_states=OXI)
    twice = [DefectRequest("vacancy", "Si", charges=(0,)), DefectRequest("vacancy", "Si", site_index=3, charges=(0,))]
    with pytest.raises(ValueError, match=r"named \['v_Si'\]; give each a distinct `name`"):
        build_seeds(sic16, twice, oxidation_states=OXI)


def test_multiplicity_and_overrides(sic16):
    atoms = AseAtomsAdaptor.get_atoms(sic16)  # 160 electrons
    assert [multiplicity_from_electrons(atoms, q) for q in (-1, 0, 1, 2)] == [2, 1, 2, 1]
    req = [DefectRequest("vacancy", "Si", charges=(0, -1))]
    opts = {"bond_distortions": [0.0]}
    seeds = build_seeds(sic16, req, oxidation_states=OXI, distortion_options=opts, multiplicity_overrides={"v_Si_0": 3})
    assert {(s.name, s.multiplicity, s.atoms.info[SPIN_KEY]) for s in seeds} == {("v_Si_0", 3, 3), ("v_Si_-1", 2, 2)}
    with pytest.raises(ValueError, match="146 electrons need an odd multiplicity"):
        build_seeds(sic16, req, oxidation_states=OXI, distortion_options=opts, multiplicity_overrides={"v_Si_0": 2})
    with pytest.raises(ValueError, match=r"match no seed; charged defects: \['v_Si_-1', 'v_Si_0'\]"):
        build_seeds(sic16, req, oxidation_states=OXI, distortion_options=opts, multiplicity_overrides={"v_Si_+1": 2})


def test_persisted_forms_round_trip(sic16):
    req = DefectRequest("substitution", "Al", site="Si", charges=(0,), site_index=2)
    assert DefectRequest.from_dict(json.loads(json.dumps(req.as_dict()))) == req
    seed = build_seeds(sic16, [req], oxidation_states=OXI, distortion_options={"bond_distortions": [0.3]})[1]
    again = Seed.from_dict(json.loads(json.dumps(seed.as_dict())))
    assert again.name == "Al_Si_0" and again.distortion == "Bond_Distortion_30.0%"
    assert np.array_equal(again.atoms.positions, seed.atoms.positions)
    assert again.atoms.info == seed.atoms.info and again.metadata == seed.metadata
    assert again.metadata["bulk_site_index"] == 2


def test_realistic_64_atom_cell():
    host = load_host(bundled_structure("SiC_conv"), [2, 2, 2])
    seeds = build_seeds(host, [DefectRequest("vacancy", "Si", charges=(-2, -1, 0))], oxidation_states=OXI)
    groups = by_name(seeds)
    assert {n: len(g) for n, g in groups.items()} == {"v_Si_-2": 15, "v_Si_-1": 15, "v_Si_0": 15}
    assert {n: g[0].multiplicity for n, g in groups.items()} == {"v_Si_-2": 1, "v_Si_-1": 2, "v_Si_0": 1}
    assert {n: g[0].metadata["num_nearest_neighbours"] for n, g in groups.items()} == {
        "v_Si_-2": 2, "v_Si_-1": 3, "v_Si_0": 4,
    }
    assert all(len(s.atoms) == 63 for s in seeds)
