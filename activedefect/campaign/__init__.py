"""The loop: a campaign's driver (train → explore → select → label → converge → confirm),
its convergence tests, the brute-force baseline, the dry run and the comparison of a
campaign with its baseline.

May import: every other stage; nothing below imports it."""

from activedefect.campaign.baseline import (
    Baseline,  # registers the baseline mode with Campaign.open
)
from activedefect.campaign.loop import Campaign

__all__ = ["Baseline", "Campaign"]
