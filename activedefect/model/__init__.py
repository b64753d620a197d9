"""The model: charge-embedded, multi-fidelity MACE members, the committee, and the
training sets and settings a campaign trains them with.

May import: the foundation modules, ``execution`` and ``store``."""
