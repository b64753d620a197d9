"""Functions that run on Dask workers. Each takes plain, picklable arguments, does one job
with one thread, and returns plain data; the driver alone writes to the campaign."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from ase.optimize import BFGS, FIRE

from activedefect.geometry import CHARGE_KEY, SPIN_KEY, content_hash
from activedefect.labels import LabelResult
from activedefect.spec_blocks import BFGS_ALPHA_EV_A2


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@dataclass(frozen=True)
class BackendCall:
    """What a worker needs to build a fidelity's backend; ``pyiron_root`` (the campaign's
    pyiron folder) makes every label a pyiron job (``executor: pyiron``)."""

    backend: str
    settings: dict[str, Any]
    timeout_s: float | None
    retries: int
    pyiron_root: str | None = None

    def build(self):  # noqa: ANN201 - a Backend
        from activedefect.oracle.backends import get_backend

        return get_backend(self.backend, self.settings, timeout_s=self.timeout_s, retries=self.retries)

    def labeller(self):  # noqa: ANN201 - a Backend or a PyironLabeller
        """What computes labels: the backend itself, or the backend through pyiron jobs."""
        if self.pyiron_root is None:
            return self.build()
        from activedefect.oracle.pyiron_exec import PyironLabeller

        return PyironLabeller(self.build(), self.pyiron_root)


def shared_data(data: Any) -> Any:
    """Data many tasks use (backend settings, training sets), held on a worker as a
    task result that Dask can recompute if that worker dies."""
    return data


def label_frame(call: BackendCall, atoms: Atoms) -> LabelResult:
    """One oracle calculation; failures come back as data, never as exceptions."""
    backend = call.labeller()
    try:
        return backend.calculate(atoms, int(atoms.info[CHARGE_KEY]), int(atoms.info[SPIN_KEY]))
    except Exception as error:  # noqa: BLE001 - a backend bug must not stop the campaign
        return LabelResult.failure("crashed", backend.settings_hash, f"{type(error).__name__}: {error}",
                                   traceback=traceback.format_exc())


@dataclass
class OracleRelaxation:
    """Every step of an oracle relaxation with its label (``path``, steps replayed from
    known labels included) and the steps not in the store yet (``new``: computed by this
    call or replayed from its journal)."""

    path: list[tuple[Atoms, LabelResult]]
    new: list[tuple[Atoms, LabelResult]]


def relax_with_oracle(
    call: BackendCall, atoms: Atoms, fmax: float, steps: int, known: dict[str, LabelResult],
    journal: str | None = None, optimizer: str = "fire", bfgs_alpha_eV_A2: float = BFGS_ALPHA_EV_A2,
) -> OracleRelaxation:
    """Relax ``atoms`` with the backend (the confirm step, bootstrap and ground-state
    relaxations); geometries already labelled in ``known`` (by content hash) are replayed,
    not recomputed. With ``journal`` (a path, :mod:`activedefect.oracle.journal`) every computed
    step is written down at once, and the steps an earlier, killed run of this relaxation
    wrote there are replayed too.

    ``optimizer``: ASE's ``"fire"`` (robust far from a minimum: the seeds' relaxations) or
    ``"bfgs"`` with initial Hessian ``bfgs_alpha_eV_A2`` × identity (few calls near one: the
    confirm step). Both are deterministic, so a replayed relaxation takes the same path."""
    from activedefect.oracle import journal as steps_journal
    from activedefect.oracle.backends.label_calculator import LabelCalculator

    charge, multiplicity = int(atoms.info[CHARGE_KEY]), int(atoms.info[SPIN_KEY])
    journalled = {content_hash(frame, charge, multiplicity): label
                  for frame, label in (steps_journal.load(journal) if journal else [])}

    def write_down(frame: Atoms, label: LabelResult) -> None:
        if label.ok:
            steps_journal.append(journal, frame, label)

    if optimizer not in ("fire", "bfgs"):
        raise ValueError(f"optimizer must be 'fire' or 'bfgs', got {optimizer!r}")
    calc = LabelCalculator(call.labeller(), charge, multiplicity, known={**journalled, **known},
                           on_computed=write_down if journal else None)
    work = atoms.copy()
    work.calc = calc
    try:
        optimiser = BFGS(work, logfile=None, alpha=bfgs_alpha_eV_A2) if optimizer == "bfgs" else FIRE(work, logfile=None)
        optimiser.run(fmax=fmax, steps=steps)
    except CalculationFailed:
        pass
    new = [(frame, label) for frame, label in calc.visited
           if content_hash(frame, charge, multiplicity) not in known]
    return OracleRelaxation(path=calc.visited, new=new)
