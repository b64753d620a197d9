"""What a campaign keeps on disk: the Zarr store of frames and labels, and the campaign
directory (spec, state, events, models, lock).

May import: the foundation modules (``geometry``, ``labels``, ``faults``, ``spec``, ``spec_blocks``) only."""

from activedefect.store.store_labels import REF_ENERGY_KEY
from activedefect.store.zarr_store import ORIGIN_KEY, Store, StoreCorruptedError

__all__ = ["ORIGIN_KEY", "REF_ENERGY_KEY", "Store", "StoreCorruptedError"]
