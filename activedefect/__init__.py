"""activedefect: active learning of charged point-defect ground states with a
charge-embedded, multi-fidelity MACE committee.

>>> from activedefect import Campaign                       # doctest: +SKIP
>>> Campaign.create("campaigns/quickstart.yaml").run()      # doctest: +SKIP

The package's folders are the stages of the loop (docs/contributing-notes.md has the map).
The names below are imported on first use, so ``import activedefect.geometry`` on a
worker does not pull in torch and Dask."""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Campaign": "activedefect.campaign.loop",
    "Baseline": "activedefect.campaign.baseline",
    "CampaignResults": "activedefect.results.campaign_results",
    "load_spec": "activedefect.spec",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'activedefect' has no attribute {name!r}")
