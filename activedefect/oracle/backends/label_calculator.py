"""An ASE calculator that labels every geometry a relaxation visits through
:meth:`Backend.calculate`, so each step is a label (codes run outside Python, such as VASP;
oracle relaxations whose steps are all kept and replayed on resume)."""

from __future__ import annotations

from typing import Callable

from ase import Atoms
from ase.calculators.calculator import (
    CalculationFailed,
    Calculator,
    PropertyNotImplementedError,
    all_changes,
)

from activedefect.geometry import content_hash
from activedefect.labels import LabelResult
from activedefect.oracle.backends.base import Backend, failure_message


class LabelCalculator(Calculator):
    """An ASE calculator that labels each geometry with :meth:`Backend.calculate` (for
    codes that run outside Python, such as VASP, and for oracle relaxations whose every
    step is kept). ``evaluated`` collects each new (geometry, label), ``visited`` every
    step's, replayed ones included; geometries whose content hash is in ``known`` are not
    computed again, so a resumed relaxation replays its finished steps for free.
    ``on_computed`` sees each new (geometry, label) as soon as it exists (a journal)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, backend: Backend, charge: int, multiplicity: int,
                 known: dict[str, LabelResult] | None = None,
                 on_computed: Callable[[Atoms, LabelResult], None] | None = None):
        super().__init__()
        self.backend = backend
        self.charge = charge
        self.multiplicity = multiplicity
        self.known = known or {}
        self.on_computed = on_computed
        self.evaluated: list[tuple[Atoms, LabelResult]] = []
        self.visited: list[tuple[Atoms, LabelResult]] = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        frame = self.atoms.copy()
        label = self.known.get(content_hash(frame, self.charge, self.multiplicity))
        if label is None:
            label = self.backend.calculate(frame, self.charge, self.multiplicity)
            self.evaluated.append((frame, label))
            if self.on_computed is not None:
                self.on_computed(frame, label)
        self.visited.append((frame, label))
        if not label.ok:
            raise CalculationFailed(failure_message(label.status, label.reason))
        self.results = {"energy": label.energy_eV, "free_energy": label.energy_eV, "forces": label.forces_eV_A}
        if label.stress_eV_A3 is not None:
            self.results["stress"] = label.stress_eV_A3
        elif "stress" in properties:
            raise PropertyNotImplementedError(f"{self.backend.name} returned no stress")
