"""Committee relaxations: batched FIRE against ase.optimize.FIRE, stopping rules, starts.

Toy committees (analytic pair potentials, one per member) stand in for MACE where the
mechanics are under test; the MACE tests at the end use a real trained committee.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.cluster import Icosahedron
from ase.optimize import FIRE

from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY, displacement
from activedefect.search.explore import exploration_starts, relax
from activedefect.search.fire import BatchFIRE, FireParams
from activedefect.search.relaxation import (
    CONVERGED,
    CUT_UNTRUSTED,
    EXPLODED,
    HEAD_KEY,
    MAX_STEPS,
    RelaxSettings,
    seed_name,
)
from activedefect.store.zarr_store import ORIGIN_KEY

LJ13_MINIMUM = -44.326801  # Lennard-Jones 13-atom icosahedron, epsilon = sigma = 1
#: rattled LJ clusters start high on the repulsive wall (reduced units): no energy limits
NO_DROP_LIMIT = {"max_energy_drop_eV_per_atom": 1e9, "max_step_drop_eV_per_atom": 1e9}


# ----------------------------------------------------------------------------- toy committee


@dataclass
class ToyPrediction:
    energy_mean_eV: float
    energy_std_eV: float
    forces_mean_eV_A: np.ndarray
    forces_std_eV_A: np.ndarray
    max_force_std_eV_A: float


def pair_energy_forces(positions: np.ndarray, phi) -> tuple[float, np.ndarray]:
    """Energy and forces of a non-periodic pair potential; ``phi(r) -> (E, dE/dr)``."""
    delta = positions[:, None, :] - positions[None, :, :]
    r = np.linalg.norm(delta, axis=-1)
    iu = np.triu_indices(len(positions), 1)
    e, de = phi(r[iu])
    forces = np.zeros_like(positions)
    pair_f = -(de / r[iu])[:, None] * delta[iu]  # force on i from j
    np.add.at(forces, iu[0], pair_f)
    np.add.at(forces, iu[1], -pair_f)
    return float(e.sum()), forces


def lj(scale: float):
    def phi(r):
        s6 = r**-6
        return scale * 4 * (s6 * s6 - s6), scale * 4 * (-12 * s6 * s6 + 6 * s6) / r

    return lambda pos: pair_energy_forces(pos, phi)


def morse(r0: float, depth: float = 1.0, a: float = 2.0):
    def phi(r):
        x = np.exp(-a * (r - r0))
        return depth * (1 - x) ** 2, 2 * depth * a * x * (1 - x)

    return lambda pos: pair_energy_forces(pos, phi)


def collapse(c: float = 1.0):
    return lambda pos: pair_energy_forces(pos, lambda r: (-c / r, c / r**2))


def slide(c: float):
    def member(pos):
        forces = np.zeros_like(pos)
        forces[:, 0] = c
        return float(-c * pos[:, 0].sum()), forces

    return member


class ToyCommittee:
    """K analytic members; counts model calls as the MACE committee does (one call per
    member per ``predict``, whatever the number of structures)."""

    def __init__(self, members):
        self.members = members
        self.n_model_calls = 0
        self.batch_sizes: list[int] = []

    def predict(self, atoms_list, head):
        assert head == "high"
        self.n_model_calls += len(self.members)
        self.batch_sizes.append(len(atoms_list))
        out = []
        for atoms in atoms_list:
            es, fs = zip(*(m(atoms.positions) for m in self.members))
            es, fs = np.array(es), np.array(fs)
            f_std = np.sqrt(((fs - fs.mean(0)) ** 2).sum(-1).mean(0))
            out.append(ToyPrediction(es.mean(), es.std(), fs.mean(0), f_std, float(f_std.max())))
        return out


class ToyCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def __init__(self, committee):
        super().__init__()
        self.committee = committee

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        (pred,) = self.committee.predict([self.atoms], "high")
        self.results = {"energy": pred.energy_mean_eV, "forces": pred.forces_mean_eV_A}


def seed_info(atoms: Atoms, name: str, charge: int = 0, defect: str = "toy") -> Atoms:
    atoms.info.update({CHARGE_KEY: charge, SPIN_KEY: 1, DEFECT_KEY: defect})
    atoms.info[ORIGIN_KEY] = {"seed": name, "generation": 0}
    return atoms


def lj13(rattle: float, seed: int) -> Atoms:
    atoms = Icosahedron("Ar", noshells=2, latticeconstant=2 ** (1 / 6) * np.sqrt(2))
    atoms.center()
    atoms.positions += np.random.default_rng(seed).normal(0, rattle, atoms.positions.shape)
    return seed_info(Atoms(atoms.numbers, atoms.positions), f"lj13-{seed}")


def ase_fire(atoms: Atoms, committee, fmax: float, steps: int) -> tuple[Atoms, int, list[np.ndarray]]:
    atoms = atoms.copy()
    atoms.calc = ToyCalculator(committee) if isinstance(committee, ToyCommittee) else committee
    opt = FIRE(atoms, logfile=None)
    path: list[np.ndarray] = []
    opt.attach(lambda: path.append(atoms.positions.copy()))
    opt.run(fmax=fmax, steps=steps)
    return atoms, opt.nsteps, path


# ----------------------------------------------------------------------------- FIRE mechanics


def test_batch_fire_reproduces_ase_fire_step_for_step():
    committee = ToyCommittee([lj(0.9), lj(1.1)])
    a, b = lj13(0.08, 1), lj13(0.15, 2)
    _, _, ase_path = ase_fire(a, committee, fmax=1e-6, steps=60)
    m0, m1 = committee.members
    fire = BatchFIRE([len(a), len(b)], FireParams())
    pos = np.concatenate([a.positions, b.positions])
    path = [pos[:13].copy()]
    for _ in range(60):
        forces = np.concatenate([(m0(p)[1] + m1(p)[1]) / 2 for p in (pos[:13], pos[13:])])
        pos = fire.step(pos, forces)
        path.append(pos[:13].copy())
    # the observer also sees the start; compare every step (FIRE's dt/alpha state included)
    assert len(ase_path) == len(path)
    for step, (mine, ref) in enumerate(zip(path, ase_path)):
        np.testing.assert_allclose(mine, ref, atol=1e-9, err_msg=f"step {step}")


def test_batch_fire_keep_drops_structures_without_disturbing_others():
    committee = ToyCommittee([lj(1.0)])
    a, b, c = lj13(0.1, 3), lj13(0.1, 4), lj13(0.1, 5)
    both = BatchFIRE([13, 13, 13])
    alone = BatchFIRE([13])
    pos3 = np.concatenate([a.positions, b.positions, c.positions])
    pos1 = c.positions.copy()
    for step in range(20):
        f3 = np.concatenate([committee.members[0](p)[1] for p in np.split(pos3, len(pos3) // 13)])
        pos3 = both.step(pos3, f3)
        pos1 = alone.step(pos1, committee.members[0](pos1)[1])
        if step == 7:  # the first two leave the batch
            both.keep(np.array([False, False, True]))
            pos3 = pos3[26:]
    np.testing.assert_allclose(pos3, pos1, atol=1e-12)


# ----------------------------------------------------------------------------- relaxations


def test_batched_relaxation_reaches_known_minimum_and_agrees_with_ase():
    committee = ToyCommittee([lj(0.8), lj(1.0), lj(1.2)])  # same minima, different stiffness
    seeds = [lj13(0.1, s) for s in range(4)]
    for i, seed in enumerate(seeds):
        seed.info.update({"frame": i, "hash": "of-the-seed"})  # as Store.get_frame returns them
    settings = RelaxSettings(fmax_eV_A=1e-3, max_steps=500, frame_interval=10, trust_hi_eV_A=None, **NO_DROP_LIMIT)
    results = relax(seeds, committee, settings, generation=3)
    n_steps = max(r.n_steps for r in results)
    # one predict per iteration for the whole batch: K calls per step
    assert committee.n_model_calls == 3 * (n_steps + 1)
    assert committee.batch_sizes[0] == 4 and sorted(committee.batch_sizes, reverse=True) == committee.batch_sizes
    for seed, result in zip(seeds, results):
        assert result.status == CONVERGED, result.message
        assert result.energy_eV == pytest.approx(LJ13_MINIMUM, abs=1e-5)
        assert result.fmax_eV_A < 1e-3
        ref, ref_steps, _ = ase_fire(seed, ToyCommittee(committee.members), fmax=1e-3, steps=500)
        d = displacement(ref, result.atoms)
        assert d.rmsd_A <= 0.01 and d.max_displacement_A <= 0.02
        assert result.n_steps == ref_steps  # same algorithm, same decisions
        assert [f.step for f in result.frames] == sorted({*range(0, result.n_steps + 1, 10), result.n_steps})
        assert result.seed == seed_name(seed)
        assert "frame" not in result.atoms.info  # a stored seed's index does not leak into its frames
        assert result.frames[-1].atoms.info[ORIGIN_KEY] == {
            "seed": seed_name(seed), "generation": 3, "trajectory": seeds.index(seed), "step": result.n_steps
        }


def test_max_steps_status():
    committee = ToyCommittee([lj(1.0)])
    settings = RelaxSettings(fmax_eV_A=1e-6, max_steps=7, frame_interval=3, **NO_DROP_LIMIT)
    (result,) = relax([lj13(0.2, 9)], committee, settings)
    assert result.status == MAX_STEPS and result.n_steps == 7
    assert [f.step for f in result.frames] == [0, 3, 6, 7]
    assert committee.n_model_calls == 8


def dimer(r: float, name: str = "dimer") -> Atoms:
    return seed_info(Atoms("H2", positions=[[0, 0, 0], [r, 0, 0]]), name)


def test_trust_hi_cuts_the_trajectory_where_the_spread_passes_it():
    committee = ToyCommittee([morse(1.4), morse(1.5), morse(1.6)])
    uncut = relax([dimer(3.2)], committee, RelaxSettings(frame_interval=1, trust_hi_eV_A=None, fmax_eV_A=1e-3))[0]
    assert uncut.status == CONVERGED
    spreads = np.array([f.max_force_std_eV_A for f in uncut.frames])
    assert spreads[0] < spreads.max()
    trust_hi = 0.5 * (spreads[0] + spreads.max())
    first_over = int(np.argmax(spreads > trust_hi))
    cut = relax([dimer(3.2)], committee, RelaxSettings(frame_interval=1, trust_hi_eV_A=trust_hi, fmax_eV_A=1e-3))[0]
    assert cut.status == CUT_UNTRUSTED
    assert cut.n_steps == uncut.frames[first_over].step
    assert cut.frames[-1].cut and not any(f.cut for f in cut.frames[:-1])
    assert cut.frames[-1].max_force_std_eV_A > trust_hi
    assert all(f.max_force_std_eV_A <= trust_hi for f in cut.frames[:-1])
    np.testing.assert_allclose(cut.atoms.positions, uncut.frames[first_over].atoms.positions)
    assert not cut.is_minimum


def test_relative_trust_lets_large_forces_through_and_cuts_where_they_fall():
    committee = ToyCommittee([morse(1.4), morse(1.5), morse(1.6)])
    uncut = relax([dimer(3.2)], committee, RelaxSettings(frame_interval=1, trust_hi_eV_A=None, fmax_eV_A=1e-3))[0]
    spread = np.array([f.max_force_std_eV_A for f in uncut.frames])
    force = np.array([f.fmax_eV_A for f in uncut.frames])
    trust_hi = 0.5 * spread.max()  # the absolute limit alone cuts early
    ratio = 1.05 * (spread / force)[spread > trust_hi].min()  # spread >= ratio x force somewhere past trust_hi
    over = (spread > trust_hi) & (spread > ratio * force)
    assert over.any() and np.argmax(spread > trust_hi) < np.argmax(over)
    settings = RelaxSettings(frame_interval=1, trust_hi_eV_A=trust_hi, trust_relative=ratio, fmax_eV_A=1e-3)
    cut = relax([dimer(3.2)], committee, settings)[0]
    assert cut.status == CUT_UNTRUSTED and cut.n_steps == uncut.frames[int(np.argmax(over))].step
    assert settings.trust_limit_eV_A(0.0) == trust_hi and settings.trust_limit_eV_A(1e3) == ratio * 1e3
    with pytest.raises(ValueError, match="trust_relative"):
        RelaxSettings(trust_relative=-0.1)


def test_explosion_when_atoms_collapse():
    committee = ToyCommittee([collapse(1.0), collapse(1.2)])
    settings = RelaxSettings(max_energy_drop_eV_per_atom=1e9, max_step_drop_eV_per_atom=1e9, trust_hi_eV_A=None)
    good = dimer(1.5, "good")
    (result,) = relax([dimer(1.5, "collapsing")], committee, settings)
    assert result.status == EXPLODED and "apart" in result.message
    assert not result.is_minimum
    # the result keeps the last sound geometry, never the collapsed one
    assert np.linalg.norm(result.atoms.positions[1] - result.atoms.positions[0]) >= 0.7
    assert result.frames[-1].step == result.n_steps - 1
    # and a sound structure in the same batch is not disturbed
    mixed = relax([dimer(1.5, "collapsing"), good], ToyCommittee([morse(1.0)]), settings)
    assert [r.status for r in mixed] == [CONVERGED, CONVERGED]


def test_explosion_uses_minimum_image():
    atoms = seed_info(Atoms("H2", positions=[[0.1, 0, 0], [4.6, 0, 0]], cell=[5, 5, 5], pbc=True), "pbc")
    committee = ToyCommittee([morse(1.0)])
    (result,) = relax([atoms], committee, RelaxSettings())
    assert result.status == EXPLODED and "seed" in result.message  # 0.5 Å apart across the boundary
    assert committee.n_model_calls == 0


def test_explosion_when_energy_falls_without_bound():
    single = seed_info(Atoms("H", positions=[[0, 0, 0]]), "slider")
    (steady,) = relax([single], ToyCommittee([slide(1.0), slide(1.1)]), RelaxSettings(trust_hi_eV_A=None))
    assert steady.status == EXPLODED and "below the start" in steady.message
    assert steady.energy_eV >= -1.0 - 1e-9  # the last kept energy is within the limit
    sudden_settings = RelaxSettings(trust_hi_eV_A=None, max_energy_drop_eV_per_atom=1e9)
    (sudden,) = relax([single], ToyCommittee([slide(20.0)]), sudden_settings)
    assert sudden.status == EXPLODED and "in one step" in sudden.message


def test_seed_without_charge_is_refused():
    with pytest.raises(ValueError, match="total_charge"):
        relax([Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]])], ToyCommittee([morse(1.0)]))


# ----------------------------------------------------------------------------- exploration starts


def periodic_state(charge: int, spin: int, shift: float) -> Atoms:
    fcc = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    atoms = Atoms("Si4", scaled_positions=fcc, cell=[5.4] * 3, pbc=True)
    atoms.positions[0, 0] += shift
    atoms.info.update({CHARGE_KEY: charge, SPIN_KEY: spin, DEFECT_KEY: "v_X", ORIGIN_KEY: {"seed": f"best{charge}"}})
    return atoms


def test_exploration_starts_rattle_and_recharge():
    best = [periodic_state(0, 1, 0.0), periodic_state(-1, 2, 0.3), periodic_state(-2, 1, 0.01)]
    starts = exploration_starts(best, n_rattled=3, stdev_A=0.05, seed=4, generation=2)
    names = [seed_name(s) for s in starts]
    assert len({(n, s.info[CHARGE_KEY]) for n, s in zip(names, starts)}) == len(starts)  # unique per state
    assert all(s.info[ORIGIN_KEY]["generation"] == 2 for s in starts)
    rattled = [s for s in starts if seed_name(s).startswith("best-1~rattle")]
    assert len(rattled) == 3 and sum(n.startswith("best0~rattle") for n in names) == 3
    for s in rattled:
        assert s.info[CHARGE_KEY] == -1 and s.info[SPIN_KEY] == 2 and s.info[DEFECT_KEY] == "v_X"
        assert 0.01 < displacement(best[1], s).rmsd_A < 0.2
    recharged = {(seed_name(s), s.info[CHARGE_KEY]): s for s in starts if "~from_q" in seed_name(s)}
    # charge 0 and -2 bests are 0.01 Å apart: re-charging one into the other adds nothing
    assert set(recharged) == {
        ("best0~from_q+0", -1),
        ("best-1~from_q-1", 0),
        ("best-1~from_q-1", -2),
        ("best-2~from_q-2", -1),
    }
    moved = recharged[("best-1~from_q-1", 0)]
    np.testing.assert_allclose(moved.positions, best[1].positions)
    assert moved.info[SPIN_KEY] == 1  # the target state's multiplicity
    again = exploration_starts(best, n_rattled=3, stdev_A=0.05, seed=4)
    np.testing.assert_allclose(again[0].positions, starts[0].positions)
    with pytest.raises(ValueError, match="two best structures"):
        exploration_starts([best[0], best[0]])


# ----------------------------------------------------------------------------- basins


def double_well_cell(x0: float, charge: int = 0, name: str = "dw", rattle: float = 0.0, seed: int = 0) -> Atoms:
    """8 atoms on a simple cubic lattice (3 Å, periodic); atom 0 moved to x = ``x0``."""
    grid = np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], float) * 3.0
    atoms = Atoms("Si8", positions=grid, cell=[6.0] * 3, pbc=True)
    atoms.positions[0, 0] = x0
    atoms.positions += np.random.default_rng(seed).normal(0, rattle, (8, 3))
    return seed_info(atoms, name, charge=charge, defect="v_X")


def double_well(k: float, depth: float = 1.0, d: float = 0.6, tilt: float = 0.2):
    """Harmonic springs to lattice sites (minimum image) plus a tilted double well along x
    on atom 0: minima with atom 0 near x = -d (lower by ~2 d tilt) and x = +d."""
    sites = double_well_cell(0.0).positions
    cell = 6.0

    def member(pos):
        delta = pos - sites
        delta -= cell * np.round(delta / cell)
        forces = -k * delta
        energy = 0.5 * k * (delta[1:] ** 2).sum() + 0.5 * k * (delta[0, 1:] ** 2).sum()
        x = delta[0, 0]
        energy += depth * ((x * x - d * d) / (d * d)) ** 2 + tilt * x
        forces[0, 0] = -(depth * 4 * x * (x * x - d * d) / d**4 + tilt)
        return float(energy), forces

    return member


def test_basins_separate_two_minima_and_merge_rattled_copies():
    from activedefect.search.basins import basin_of_results, group_basins
    from activedefect.search.selection import Exploration

    committee = ToyCommittee([double_well(4.0), double_well(5.0)])
    seeds = [double_well_cell(+0.5, name=f"plus{i}", rattle=0.1, seed=i) for i in range(3)]
    seeds += [double_well_cell(-0.5, name=f"minus{i}", rattle=0.1, seed=10 + i) for i in range(3)]
    seeds += [double_well_cell(+0.5, charge=-1, name="other-charge")]
    results = relax(seeds, committee, RelaxSettings(fmax_eV_A=1e-3, trust_hi_eV_A=None))
    assert all(r.status == CONVERGED for r in results)
    basins = group_basins(results, rmsd_A=0.05, max_displacement_A=0.1)
    assert set(basins) == {("v_X", 0), ("v_X", -1)}
    low, high = basins[("v_X", 0)]
    assert low.rank == 0 and low.is_ground_state and high.rank == 1
    assert sorted(low.members) == ["minus0", "minus1", "minus2"]
    assert sorted(high.members) == ["plus0", "plus1", "plus2"]
    assert low.energy_eV < high.energy_eV
    assert low.energy_eV == min(low.member_energies_eV) == low.member_energies_eV[0]
    assert low.atoms.positions[0, 0] < 0 < high.atoms.positions[0, 0]
    candidates = Exploration(results, basins, {}).ground_state_candidates()
    assert [b.members for b in candidates.values()] == [["other-charge"], low.members]
    assert basin_of_results(basins, len(results)) == [1, 1, 1, 0, 0, 0, 0]
    # a tolerance wider than the distance between the minima merges them, lowest first
    (merged,) = group_basins(results, rmsd_A=1.0, max_displacement_A=None)[("v_X", 0)]
    assert merged.energy_eV == low.energy_eV and len(merged.members) == 6
    # only minima count: a trajectory that stopped early is left out
    results[0].status = MAX_STEPS
    assert "plus0" not in group_basins(results)[("v_X", 0)][1].members


def test_symmetry_equivalent_minima_are_two_basins_until_the_screen_merges_them():
    from activedefect.search.basins import group_basins

    committee = ToyCommittee([double_well(4.0, tilt=0.0), double_well(5.0, tilt=0.0)])
    seeds = [double_well_cell(+0.5, name="plus"), double_well_cell(-0.5, name="minus")]
    results = relax(seeds, committee, RelaxSettings(fmax_eV_A=1e-4, trust_hi_eV_A=None))
    assert results[0].energy_eV == pytest.approx(results[1].energy_eV, abs=1e-6)
    assert len(group_basins(results)[("v_X", 0)]) == 2  # same atom order: two basins
    from activedefect.search.basins import equivalent

    assert equivalent(results[0].atoms, results[1].atoms, 0.05, 0.25)  # the screen's test merges them


# ----------------------------------------------------------------------------- real MACE committee


@pytest.fixture(scope="module")
def mace_committee(tmp_path_factory):
    """Two tiny charge-embedded MACE members trained on EMT labels of a 7-atom Cu cell
    with a vacancy (charges -1 and 0, the charge shifting the labels by 0.5 eV per e)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from activedefect.model.committee import Committee
    from activedefect.model.config import ModelConfig, TrainSettings
    from activedefect.model.graphs import REF_ENERGY_KEY, REF_FORCES_KEY
    from activedefect.model.member_training import train_member

    host = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    del host[0]
    rng = np.random.default_rng(0)
    frames = []
    for i in range(16):
        atoms = host.copy()
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        charge = -(i % 2)
        energy = atoms.get_potential_energy() + 0.5 * charge
        atoms.info.update({REF_ENERGY_KEY: energy, CHARGE_KEY: charge, SPIN_KEY: 1})
        atoms.arrays[REF_FORCES_KEY] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    config = ModelConfig(elements=("Cu",), charges=(-1, 0), num_channels=16, r_max=4.0, radial_MLP=(16, 16))
    folder = tmp_path_factory.mktemp("committee")
    paths = []
    for k in range(2):
        path = folder / f"member-{k}.model"
        train_member({"low": frames, "high": frames}, config, seed=k, epochs=10, out_path=path,
                     bootstrap=True, settings=TrainSettings(batch_size=4))
        paths.append(path)
    return Committee.load(paths), host


def test_batched_relaxation_matches_ase_fire_with_a_mace_committee(mace_committee):
    from activedefect.model.committee import CommitteeCalculator

    committee, host = mace_committee
    rng = np.random.default_rng(1)
    seeds = []
    for i in range(4):
        atoms = host.copy()
        atoms.positions += rng.normal(0, 0.06, atoms.positions.shape)
        seeds.append(seed_info(atoms, f"rattled{i}", charge=-(i % 2), defect="v_Cu"))
    settings = RelaxSettings(fmax_eV_A=0.02, max_steps=300, trust_hi_eV_A=None)
    before = committee.n_model_calls
    results = relax(seeds, committee, settings)
    n_steps = max(r.n_steps for r in results)
    assert committee.n_model_calls - before == 2 * (n_steps + 1)  # one call per member per step, whole batch
    for seed, result in zip(seeds, results):
        assert result.status == CONVERGED, result.message
        atoms = seed.copy()
        atoms.calc = CommitteeCalculator(committee, "high")
        FIRE(atoms, logfile=None).run(fmax=0.02, steps=300)
        assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.02
        d = displacement(atoms, result.atoms)
        assert d.rmsd_A <= 0.01, (seed_name(seed), d)
        assert result.energy_eV == pytest.approx(atoms.get_potential_energy(), abs=1e-3)
        assert result.energy_std_eV >= 0 and result.frames[-1].max_force_std_eV_A >= 0


def test_shortest_distance_matches_ase_minimum_image():
    from ase.build import bulk

    from activedefect.search.explore import shortest_distance

    rng = np.random.default_rng(2)
    for atoms in (bulk("Si", "diamond", a=5.43) * (2, 2, 1), bulk("Mg", "hcp", a=3.2) * (2, 2, 2), lj13(0.1, 0)):
        atoms.positions += rng.normal(0, 0.2, atoms.positions.shape)
        reference = atoms.get_all_distances(mic=atoms.pbc.any())[np.triu_indices(len(atoms), 1)].min()
        assert shortest_distance(atoms) == pytest.approx(reference)


def test_max_batch_splits_predict_calls_without_changing_results():
    seeds = [lj13(0.1, s) for s in range(5)]
    settings = RelaxSettings(fmax_eV_A=1e-3, max_steps=500, trust_hi_eV_A=None, **NO_DROP_LIMIT)
    whole = relax(seeds, ToyCommittee([lj(0.9), lj(1.1)]), settings)
    committee = ToyCommittee([lj(0.9), lj(1.1)])
    split = relax(seeds, committee, RelaxSettings(**{**settings.__dict__, "max_batch": 2}))
    assert max(committee.batch_sizes) == 2 and committee.batch_sizes[:3] == [2, 2, 1]
    for a, b in zip(whole, split):
        assert a.n_steps == b.n_steps
        np.testing.assert_allclose(a.atoms.positions, b.atoms.positions)


class TwoHeadToyCommittee(ToyCommittee):
    """One set of analytic members per head (``{"low": [...], "high": [...]}``)."""

    def __init__(self, members_by_head):
        super().__init__(members_by_head["high"])
        self.members_by_head = members_by_head
        self.heads_called: list[str] = []

    def predict(self, atoms_list, head):
        self.heads_called.append(head)
        self.members = self.members_by_head[head]
        return super().predict(atoms_list, "high")


def test_start_head_relaxes_on_low_first_then_ends_on_the_high_minimum():
    """A dimer whose `low` bond is 1.0 Å and `high` bond 1.1 Å: relaxed from 2.0 Å on
    `low` first, it stops at `high`'s minimum, having passed `low`'s on the way."""
    committee = TwoHeadToyCommittee({"low": [morse(1.0)], "high": [morse(1.1)]})
    settings = RelaxSettings(fmax_eV_A=1e-3, max_steps=400, frame_interval=1, trust_hi_eV_A=None,
                             start_head="low", **NO_DROP_LIMIT)
    (result,) = relax([dimer(1.6)], committee, settings)
    assert result.status == CONVERGED, result.message
    bond = lambda atoms: float(np.linalg.norm(atoms.positions[1] - atoms.positions[0]))  # noqa: E731
    assert bond(result.atoms) == pytest.approx(1.1, abs=1e-3)
    assert result.energy_eV == pytest.approx(0.0, abs=1e-5)  # the high head's energy at its minimum
    switch = committee.heads_called.index("high")
    assert set(committee.heads_called[:switch]) == {"low"} and set(committee.heads_called[switch:]) == {"high"}
    assert any(bond(f.atoms) == pytest.approx(1.0, abs=2e-3) for f in result.frames)  # low's minimum visited
    steps = [f.step for f in result.frames]
    assert steps == sorted(set(steps))  # the switch point is one frame, seen on the final head


def test_without_start_head_only_the_final_head_is_asked():
    committee = TwoHeadToyCommittee({"low": [morse(1.0)], "high": [morse(1.1)]})
    settings = RelaxSettings(fmax_eV_A=1e-3, max_steps=400, trust_hi_eV_A=None, **NO_DROP_LIMIT)
    (result,) = relax([dimer(1.6)], committee, settings)
    assert result.status == CONVERGED and set(committee.heads_called) == {"high"}


def test_a_continued_start_goes_on_on_the_head_its_relaxation_had_reached():
    """A relaxation stopped on `high` (cut, out of steps) and continued next generation
    does not go back to `low`: the start carries the head it had reached."""
    committee = TwoHeadToyCommittee({"low": [morse(1.0)], "high": [morse(1.1)]})
    settings = RelaxSettings(fmax_eV_A=1e-3, max_steps=400, trust_hi_eV_A=None, start_head="low", **NO_DROP_LIMIT)
    (first,) = relax([dimer(1.6)], committee, replace(settings, max_steps=60))
    assert first.status == MAX_STEPS and first.head == "high"
    start = dimer(1.6)
    start.positions = first.atoms.positions
    start.info[HEAD_KEY] = first.head
    committee.heads_called.clear()
    (second,) = relax([start], committee, settings)
    assert second.status == CONVERGED and set(committee.heads_called) == {"high"}
