"""Shared definitions: the content hash survives an extxyz round trip and tells charge and
spin apart; RMSD is in Å with the mean displacement removed and minimum image applied."""

import numpy as np
from ase.build import bulk
from ase.io import read, write

from activedefect.geometry import CHARGE_KEY, SPIN_KEY, content_hash, displacement


def _cell(seed: int = 0):
    atoms = bulk("SiC", "zincblende", a=4.36).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=seed)
    atoms.info[CHARGE_KEY] = -1
    atoms.info[SPIN_KEY] = 2
    return atoms


def test_hash_survives_extxyz_round_trip(tmp_path):
    frames = [_cell(seed) for seed in range(200)]
    write(tmp_path / "f.extxyz", frames, format="extxyz")
    back = read(tmp_path / "f.extxyz", index=":")
    assert [content_hash(a) for a in frames] == [content_hash(b) for b in back]


def test_hash_depends_on_charge_spin_and_geometry():
    atoms = _cell()
    base = content_hash(atoms)
    assert content_hash(atoms, charge=0) != base
    assert content_hash(atoms, multiplicity=1) != base
    moved = atoms.copy()
    moved.positions[0, 0] += 1e-4
    assert content_hash(moved) != base
    moved.positions[0, 0] = atoms.positions[0, 0] + 1e-7
    assert content_hash(moved) == base


def test_displacement_removes_translation_and_uses_minimum_image():
    atoms = _cell()
    shifted = atoms.copy()
    shifted.positions += [0.3, -0.2, 0.1]
    assert displacement(atoms, shifted).rmsd_A < 1e-12
    wrapped = atoms.copy()
    wrapped.positions[0] += atoms.cell[0]
    assert displacement(atoms, wrapped).max_displacement_A < 1e-9
    one = atoms.copy()
    one.positions[3, 2] += 0.16
    d = displacement(atoms, one)
    n = len(atoms)
    expected = np.sqrt(((0.16 * (1 - 1 / n)) ** 2 + (n - 1) * (0.16 / n) ** 2) / n)
    assert abs(d.rmsd_A - expected) < 1e-9
    assert abs(d.max_displacement_A - 0.16 * (1 - 1 / n)) < 1e-9
