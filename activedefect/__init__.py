"""activedefect: active learning of charged point-defect ground states with a
charge-embedded, multi-fidelity MACE committee."""

__version__ = "0.1.0"
