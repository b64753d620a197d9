"""Labelled frames on their way into mace: the keys a training frame carries, the
content-hash hold-out, and the conversion to mace graphs, checking first what mace would
silently replace (a missing charge, an unknown head, a charge outside the embedding)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ase import Atoms
from mace import data as mace_data
from mace.tools.torch_tools import default_dtype
from mace.tools.utils import AtomicNumberTable

from activedefect.geometry import CHARGE_KEY, content_hash

#: ``atoms.info`` key of the reference (oracle) energy in eV, as MACE's extxyz files name it.
REF_ENERGY_KEY = "REF_energy"
#: ``atoms.arrays`` key of the reference forces in eV/Å.
REF_FORCES_KEY = "REF_forces"
#: Optional per-frame loss weight (``atoms.info``; default 1), on top of head balancing:
#: lets a campaign fit the frames near each minimum more tightly than the rest.
LOSS_WEIGHT_KEY = "loss_weight"


def split_holdout(frames: Sequence[Atoms], valid_fraction: float) -> tuple[list[Atoms], list[Atoms]]:
    """Split frames into (train, valid) by their content hash, not by a seed.

    A frame is held out when the first 48 bits of its :func:`content_hash` (geometry,
    charge, multiplicity) fall below ``valid_fraction``: every member and every
    generation holds out the same frames, a frame never moves between the sets as data
    grow, and the same geometry labelled by two fidelities lands on the same side.
    Callers evaluate the committee on ``split_holdout(...)[1]`` for honest held-out
    errors. Never returns an empty train set for a non-empty input: if every frame
    would be held out, none is.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1); got {valid_fraction}")
    train: list[Atoms] = []
    valid: list[Atoms] = []
    for atoms in frames:
        u = int(content_hash(atoms)[:12], 16) / float(16**12)
        (valid if u < valid_fraction else train).append(atoms)
    if not train:
        return list(frames), []
    return train, valid


def embedding_range(spec: Mapping[str, Any]) -> tuple[int, int]:
    """Lowest and highest value a categorical embedding (:meth:`ModelConfig.embedding_specs`)
    can index: charges, or multiplicities 2S+1."""
    lo = -int(spec.get("offset", 0))
    return lo, lo + int(spec["num_classes"]) - 1


def _charge_and_spin(atoms: Atoms, config_specs: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """Raise unless ``atoms.info`` holds every embedded quantity (charge; multiplicity
    when the model embeds it) as an integer the embedding can index."""
    for key, spec in config_specs.items():
        if key not in atoms.info:
            what = "total charge" if key == CHARGE_KEY else "spin multiplicity 2S+1"
            raise KeyError(
                f"{where}: atoms.info has no {key!r}; set atoms.info[{key!r}] to the {what} "
                "(the model never assumes a neutral singlet)"
            )
        value = atoms.info[key]
        if float(value) != int(value):
            raise ValueError(f"{where}: atoms.info[{key!r}] = {value!r} is not an integer")
        lo, hi = embedding_range(spec)
        if not lo <= int(value) <= hi:
            raise ValueError(
                f"{where}: atoms.info[{key!r}] = {int(value)} is outside the model's embedding range "
                f"{lo}..{hi}; the charges (and margin) are fixed at generation 0 in ModelConfig"
            )


def _check_elements(atoms: Atoms, zs: Sequence[int], where: str) -> None:
    missing = sorted(set(int(z) for z in atoms.numbers) - set(int(z) for z in zs))
    if missing:
        raise ValueError(
            f"{where}: atomic numbers {missing} are not in the model's elements (Z = {list(zs)}); "
            "add them to ModelConfig.elements at generation 0"
        )


def atoms_to_graphs(
    atoms_list: Sequence[Atoms],
    *,
    head: str,
    heads: Sequence[str],
    zs: Sequence[int],
    r_max: float,
    embedding_specs: Mapping[str, Mapping[str, Any]],
    dtype: str,
    with_labels: bool,
) -> list[mace_data.AtomicData]:
    """mace graphs for ``atoms_list`` on ``head``, after checking what mace would
    silently replace: an unknown head (mace: the last head), a missing charge (mace: 0),
    a charge outside the embedding (mace: IndexError or a wrong row), unknown elements."""
    if head not in heads:
        raise ValueError(f"unknown head {head!r}; the model has heads {list(heads)}")
    info_keys = {name: name for name in embedding_specs}
    arrays_keys = {}
    if with_labels:
        info_keys["energy"] = REF_ENERGY_KEY
        arrays_keys["forces"] = REF_FORCES_KEY
    keyspec = mace_data.KeySpecification(info_keys=info_keys, arrays_keys=arrays_keys)
    z_table = AtomicNumberTable([int(z) for z in zs])
    graphs = []
    with default_dtype(dtype):
        for i, atoms in enumerate(atoms_list):
            where = f"structure {i} ({atoms.get_chemical_formula()}, head {head!r})"
            _check_elements(atoms, zs, where)
            _charge_and_spin(atoms, embedding_specs, where)
            if with_labels:
                if REF_ENERGY_KEY not in atoms.info or REF_FORCES_KEY not in atoms.arrays:
                    raise KeyError(
                        f"{where}: training frames need atoms.info[{REF_ENERGY_KEY!r}] (eV) and "
                        f"atoms.arrays[{REF_FORCES_KEY!r}] (eV/Å)"
                    )
            config = mace_data.config_from_atoms(atoms, key_specification=keyspec, head_name=head)
            graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max, heads=list(heads)))
    return graphs
