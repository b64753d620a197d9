"""The committee does the search: trained with real MACE on real xTB labels of a real
ShakeNBreak seed, a committee relaxation from that distorted seed ends where the oracle's
own relaxation of it ends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from activedefect.geometry import displacement
from activedefect.model.committee import (
    Committee,
    ModelConfig,
    TrainSettings,
    train_member,
)
from activedefect.model.graphs import REF_FORCES_KEY
from activedefect.model.training import emphasize_minima, labelled_frame
from activedefect.oracle.tasks import BackendCall, relax_with_oracle
from activedefect.search.explore import relax
from activedefect.search.relaxation import CONVERGED, RelaxSettings
from activedefect.seeds.preparation import build_campaign_seeds
from activedefect.spec import load_spec

QUICKSTART = Path(__file__).parents[1] / "campaigns" / "quickstart.yaml"


def oracle_path(atoms: Atoms, settings: dict, fmax: float = 0.01, steps: int = 300) -> tuple[list[Atoms], bool]:
    """Every step of the campaign's oracle relaxation of ``atoms`` (xTB, FIRE), labelled as
    MACE reads labels, and whether it converged (``steps=0``: one labelled frame)."""
    relaxation = relax_with_oracle(BackendCall("xtb", settings, timeout_s=None, retries=1), atoms, fmax, steps, known={})
    frames = [labelled_frame(frame, label) for frame, label in relaxation.path]
    converged = bool(np.linalg.norm(frames[-1].arrays[REF_FORCES_KEY], axis=1).max() < fmax)
    return frames, converged


@pytest.mark.slow
def test_a_committee_relaxation_from_a_distorted_seed_reaches_the_oracles_minimum(tmp_path):
    """The loop in miniature: train on the oracle's path from the seed and small rattles
    of its end, relax on the committee from the seed, label where the committee went,
    retrain (warm); within four rounds the committee's minimum is the oracle's (≤ 0.05 Å)."""
    spec = load_spec(QUICKSTART)
    settings = dict(spec.fidelities["high"].settings)
    (seed,) = [s for s in build_campaign_seeds(spec) if s.charge == 0 and s.distortion == "Bond_Distortion_10.0%"]
    path, converged = oracle_path(seed.atoms, settings)
    assert converged, "the oracle relaxation did not converge"
    minimum = path[-1]
    rng = np.random.default_rng(0)
    frames = path[::2] + [minimum]
    for _ in range(6):  # the basin's curvature: small rattles of the minimum
        rattled = minimum.copy()
        rattled.positions += rng.normal(0.0, 0.03, rattled.positions.shape)
        frames += oracle_path(rattled, settings, steps=0)[0]
    config = ModelConfig(elements=("C", "Si"), charges=(0,), num_channels=16, r_max=4.5)
    start = seed.atoms.copy()
    start.info["origin"] = {"seed": seed.distortion}
    relax_settings = RelaxSettings(fmax_eV_A=0.01, max_steps=300, trust_hi_eV_A=None, frame_interval=5)
    previous = None
    reached = []
    for round_ in range(4):
        emphasize_minima(frames, weight=100.0, window_eV=0.1)
        model = tmp_path / f"member-{round_}.model"
        train_member({"low": frames}, config, seed=0, epochs=40 if previous is None else 15, out_path=model,
                     init_from=previous, settings=TrainSettings(hot_force_eV_A=1.0, ema_decay=0.99))
        previous = model
        (result,) = relax([start], Committee.load([model], "cpu"), relax_settings)
        reached.append(displacement(result.atoms, minimum).rmsd_A)
        if result.status == CONVERGED and reached[-1] <= 0.05:
            break
        for frame in result.frames:  # label where the committee went, as the loop does
            frames += oracle_path(frame.atoms, settings, steps=0)[0]
    assert displacement(seed.atoms, minimum).rmsd_A > 0.2, "the seed starts far from its minimum"
    assert result.status == CONVERGED and reached[-1] <= 0.05, (reached, len(frames))
