"""From the spec to what the loop starts from: the host supercell, the defect requests,
the ShakeNBreak seeds, and the host check — each validated before any work starts."""

from __future__ import annotations

from ase import Atoms
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from activedefect.oracle.tasks import BackendCall
from activedefect.seeds.builder import build_seeds, check_against_host
from activedefect.seeds.defects import DefectRequest, Seed, charged_name
from activedefect.seeds.host import load_host
from activedefect.seeds.hostcheck import HostCheckResult, check_host
from activedefect.spec import CampaignSpec, SpecError
from activedefect.spec_blocks import DefectSpec


def defect_request(entry: DefectSpec) -> DefectRequest:
    charges = tuple(entry.charges) if entry.charges is not None else None
    if entry.vacancy is not None:
        return DefectRequest(kind="vacancy", element=entry.vacancy, charges=charges)
    if entry.substitution is not None:
        return DefectRequest(kind="substitution", element=entry.substitution.element,
                             site=entry.substitution.site, charges=charges)
    return DefectRequest(kind="interstitial", element=entry.interstitial.element,
                         frac_coords=tuple(entry.interstitial.frac_coords), charges=charges)


def host_supercell(spec: CampaignSpec) -> Atoms:
    return AseAtomsAdaptor.get_atoms(load_host(spec.host.structure, spec.host.supercell))


def campaign_host(spec: CampaignSpec) -> Structure:
    """The host supercell; a structure file that cannot serve as a host (unreadable, not
    periodic, overlapping atoms) is a :class:`SpecError` naming ``host.structure``."""
    try:
        return load_host(spec.host.structure, spec.host.supercell)
    except (ValueError, FileNotFoundError) as error:
        raise SpecError(f"invalid campaign spec:\n  host.structure: {error}") from None


def checked_requests(spec: CampaignSpec, host: Structure) -> list[DefectRequest]:
    """The defect requests, each checked against the host; errors name ``defects.<i>``."""
    entries = []
    for i, entry in enumerate(spec.defects):
        try:
            request = defect_request(entry)
            check_against_host(request, host)
        except ValueError as error:
            raise SpecError(f"invalid campaign spec:\n  defects.{i}: {error}") from None
        entries.append(request)
    return entries


def build_campaign_seeds(spec: CampaignSpec) -> list[Seed]:
    """Every seed of every defect × charge state, deterministic for the spec's options."""
    host = campaign_host(spec)
    requests = checked_requests(spec, host)
    try:
        return build_seeds(
            host,
            requests,
            oxidation_states=spec.host.oxidation_states,
            distortion_options=dict(spec.distortions),
            multiplicity_overrides=dict(spec.multiplicity),
        )
    except ValueError as error:
        raise SpecError(f"invalid campaign spec: {error}") from None


def validate_seeds(spec: CampaignSpec) -> list[Seed]:
    """Build the seeds and ask each fidelity's backend whether it can represent every
    charge state and multiplicity; raise :class:`SpecError` naming the defect otherwise."""
    seeds = build_campaign_seeds(spec)
    checked = set()
    for fidelity, block in spec.fidelities.items():
        backend = BackendCall(block.backend, dict(block.settings), block.timeout_s, block.retry.attempts).build()
        for seed in seeds:
            key = (fidelity, seed.defect, seed.charge, seed.multiplicity)
            if key in checked:
                continue
            checked.add(key)
            try:
                backend.check_charge(seed.atoms, seed.charge, seed.multiplicity)
            except ValueError as error:
                raise SpecError(
                    f"invalid campaign spec:\n  defects ({charged_name(seed.defect, seed.charge)}), "
                    f"fidelities.{fidelity}: {error}"
                ) from None
    unknown = set(spec.multiplicity) - {charged_name(s.defect, s.charge) for s in seeds}
    if unknown:
        raise SpecError(
            f"invalid campaign spec:\n  multiplicity: {sorted(unknown)} name no defect charge state of this "
            f"campaign (known: {sorted({charged_name(s.defect, s.charge) for s in seeds})})"
        )
    return seeds


def host_check_task(call: BackendCall, spec: CampaignSpec, fidelity: str) -> HostCheckResult:
    """Runs on a worker: relax a rattled perfect supercell with this fidelity's oracle."""
    from activedefect.seeds.defects import multiplicity_from_electrons

    atoms = host_supercell(spec)
    multiplicity = multiplicity_from_electrons(atoms, 0)
    settings = spec.host_check
    return check_host(
        atoms,
        call.build().calculator(0, multiplicity),
        fidelity=fidelity,
        max_drop_eV_per_atom=settings.max_drop_eV_per_atom,
        rattle_stdev_A=settings.rattle_stdev_A,
        seed=spec.seed,
        fmax=settings.fmax_eV_A,
        max_steps=settings.max_steps,
        max_displacement_A=settings.max_displacement_A,
    )
