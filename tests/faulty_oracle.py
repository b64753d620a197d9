"""A real GFN1-xTB oracle (tblite) that misbehaves on the frames it is told to, for the
fault-injection tests: the ase backend loads it by import path on the Dask workers, so
the faults go through the engine's real label task, failure typing and store.

``faults`` maps a frame's content hash (charge and multiplicity included) to one of
:data:`FAULTS`; every other frame gets the real xTB energy and forces.
"""

from __future__ import annotations

import os
import signal
import time
from typing import ClassVar

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from tblite.ase import TBLite

from activedefect.geometry import content_hash

FAULTS = ("segfault", "hang", "nan", "wrong_atom_count", "raise")


class FaultyXTB(Calculator):
    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces"]

    def __init__(self, charge: int = 0, multiplicity: int = 1, faults: dict[str, str] | None = None,
                 electronic_temperature: float = 5000.0, **kwargs):
        super().__init__(**kwargs)
        self.charge, self.multiplicity = charge, multiplicity
        self.faults = dict(faults or {})
        unknown = set(self.faults.values()) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self.electronic_temperature = electronic_temperature

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        fault = self.faults.get(content_hash(self.atoms, self.charge, self.multiplicity))
        if fault == "segfault":  # the process running the calculation dies
            os.kill(os.getpid(), signal.SIGSEGV)
        if fault == "hang":
            time.sleep(3600)
        if fault == "raise":
            raise RuntimeError("xtb: internal error (injected)")
        xtb = TBLite(method="GFN1-xTB", charge=self.charge, multiplicity=self.multiplicity,
                     electronic_temperature=self.electronic_temperature, verbosity=0)
        work = self.atoms.copy()
        work.calc = xtb
        energy, forces = work.get_potential_energy(), work.get_forces()
        if fault == "nan":
            forces = forces.copy()
            forces[0, 0] = np.nan
        if fault == "wrong_atom_count":
            forces = forces[:-1]
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
