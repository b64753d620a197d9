"""Unfinished committee relaxations: where the next generation starts them, and why a
charge state does not converge while a seed is still on its way to a minimum."""

from __future__ import annotations

from ase import Atoms

from activedefect.campaign.convergence import GroundStateRecord, assess, mark_stale
from activedefect.geometry import CHARGE_KEY, DEFECT_KEY, SPIN_KEY
from activedefect.search.relaxation import (
    CONVERGED,
    CUT_UNTRUSTED,
    EXPLODED,
    MAX_STEPS,
    RelaxResult,
)
from activedefect.search.selection import Exploration, continued_starts
from activedefect.spec_blocks import ConvergenceSpec
from activedefect.store.zarr_store import ORIGIN_KEY


def seed(name: str, x: float, charge: int = 0) -> Atoms:
    atoms = Atoms("Si2", positions=[[0, 0, 0], [x, 0, 0]], cell=[6, 6, 6], pbc=True)
    atoms.info.update({CHARGE_KEY: charge, SPIN_KEY: 1, DEFECT_KEY: "v_X", ORIGIN_KEY: {"seed": name}})
    return atoms


def result(name: str, status: str, x: float, charge: int = 0) -> RelaxResult:
    return RelaxResult(name, "v_X", charge, 1, status, seed(name, x, charge), -1.0, 0.01, 0.1, 0.2, 7)


def test_unfinished_relaxations_go_on_from_where_they_stopped():
    seeds = [seed(name, 2.0) for name in ("cut", "steps", "converged", "exploded", "new", "oracle")]
    seeds.append(seed("cut", 2.0, charge=-1))  # same seed name, other charge state: its own lineage
    previous = [result("cut", CUT_UNTRUSTED, 2.3), result("steps", MAX_STEPS, 2.4),
                result("converged", CONVERGED, 2.5), result("exploded", EXPLODED, 0.4),
                result("cut~rattle0", CUT_UNTRUSTED, 2.6), result("oracle", CUT_UNTRUSTED, 2.7)]
    oracle_ends = {("v_X", 0, "oracle"): seed("whatever", 2.9), ("v_X", 0, "converged"): seed("whatever", 3.0)}
    starts = continued_starts(seeds, previous, oracle_ends)
    assert [a.positions[1, 0] for a in starts] == [2.3, 2.4, 2.0, 2.0, 2.0, 2.9, 2.0]
    assert starts[0] is not previous[0].atoms  # a copy: the cached exploration stays as it was
    assert [a.info[CHARGE_KEY] for a in starts] == [0, 0, 0, 0, 0, 0, -1]
    assert [a.info[ORIGIN_KEY]["seed"] for a in starts] == [s.info[ORIGIN_KEY]["seed"] for s in seeds]


def test_unfinished_counts_only_the_seeds_lineages():
    results = [result("a", CUT_UNTRUSTED, 2.0), result("b", MAX_STEPS, 2.0), result("c", CONVERGED, 2.0),
               result("a~rattle0", CUT_UNTRUSTED, 2.0), result("a", CUT_UNTRUSTED, 2.0, charge=-1)]
    exploration = Exploration(results, {}, {})
    assert exploration.unfinished({"a", "b", "c"}) == {("v_X", 0): 2, ("v_X", -1): 1}
    results.append(result("b", EXPLODED, 2.0))
    assert Exploration(results, {}, {}).unfinished({"b"}, (EXPLODED,)) == {("v_X", 0): 1}


def test_a_seed_still_under_way_holds_convergence_back():
    def record(unfinished: int) -> GroundStateRecord:
        return GroundStateRecord("v_X", 0, 3, frame=1, seed="a", predicted_energy_eV=-1.0, max_force_spread_eV_A=0.01,
                                 high_energy_eV=-1.001, high_max_force_eV_A=0.01, rmsd_to_previous_A=0.0,
                                 unfinished_seeds=unfinished)

    previous = GroundStateRecord("v_X", 0, 2, frame=1, seed="a", predicted_energy_eV=-1.0, max_force_spread_eV_A=0.01,
                                 stable_generations=5)
    strict, lenient = ConvergenceSpec(), ConvergenceSpec(finished_seeds=False)
    assert assess(record(0), previous, strict, 0.05).converged
    held = assess(record(2), previous, strict, 0.05)
    assert not held.converged and held.reasons == ("2 seed relaxations not at a minimum yet",)
    assert assess(record(2), previous, lenient, 0.05).converged


def test_an_exploded_seed_is_reported_and_holds_convergence_back():
    previous = GroundStateRecord("v_X", 0, 2, frame=1, seed="a", predicted_energy_eV=-1.0, max_force_spread_eV_A=0.01,
                                 stable_generations=5)
    record = GroundStateRecord("v_X", 0, 3, frame=1, seed="a", predicted_energy_eV=-1.0, max_force_spread_eV_A=0.01,
                               high_energy_eV=-1.001, high_max_force_eV_A=0.01, rmsd_to_previous_A=0.0,
                               exploded_seeds=1)
    held = assess(record, previous, ConvergenceSpec(), 0.05)
    assert not held.converged and held.reasons == ("1 seed relaxations exploded on the committee (no minimum from them)",)
    assert GroundStateRecord.from_dict(held.as_dict()) == held


def test_a_record_no_later_minimum_renewed_is_never_converged():
    record = GroundStateRecord("v_X", 0, 3, frame=1, seed="a", predicted_energy_eV=-1.0, max_force_spread_eV_A=0.01,
                               stable_generations=4, converged=True)
    assert mark_stale(GroundStateRecord(**{**record.as_dict(), "reasons": ()}), 3).converged  # its own generation
    stale = mark_stale(record, 4)
    assert not stale.converged and stale.stable_generations == 0
    assert stale.reasons == ("no committee minimum in generation 4 (record from generation 3)",)
