"""From the spec and the store to what committee members train on: the model
configuration (fixed for the whole campaign so warm starts always match), the optimiser
settings, and the train / held-out split of every label."""

from __future__ import annotations

from ase import Atoms

from activedefect.committee import ModelConfig, TrainSettings, split_holdout
from activedefect.spec import FIDELITIES, CampaignSpec
from activedefect.store import Store


def committee_config(spec: CampaignSpec, seeds: list[dict], elements: list[str]) -> ModelConfig:
    """Elements, charge states and heads of the campaign with the spec's architecture.

    ``seeds`` are the campaign's seed records (``defect``, ``charge``, ``multiplicity``)."""
    model = spec.committee.model
    multiplicities = sorted({int(s["multiplicity"]) for s in seeds}) if model.spin_embedding else None
    return ModelConfig(
        elements=tuple(sorted(set(elements))),
        charges=tuple(sorted({int(s["charge"]) for s in seeds})),
        heads=FIDELITIES,
        multiplicities=tuple(multiplicities) if multiplicities else None,
        num_channels=model.num_channels,
        max_L=model.max_L,
        max_ell=model.max_ell,
        correlation=model.correlation,
        num_interactions=model.num_interactions,
        r_max=model.r_max_A,
        MLP_irreps=model.mlp_irreps,
        embedding_dim=model.charge_embedding_dim,
    )


def train_settings(spec: CampaignSpec) -> TrainSettings:
    return TrainSettings(lr=spec.committee.learning_rate, batch_size=spec.committee.batch_size)


def training_data(
    store: Store, settings_hashes: dict[str, str], valid_fraction: float
) -> tuple[dict[str, list[Atoms]], dict[str, list[Atoms]]]:
    """Every ok label under the current settings, split by content hash into (train,
    held-out) per head; the same frame is held out in every generation."""
    train, valid = {}, {}
    for fidelity in FIDELITIES:
        frames = store.labelled_atoms(fidelity, settings_hashes[fidelity])
        train[fidelity], valid[fidelity] = split_holdout(frames, valid_fraction)
    return train, valid
