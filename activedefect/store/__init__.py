"""What a campaign keeps on disk: the Zarr store of frames and labels, and the campaign
directory (spec, state, events, models, lock).

May import: the foundation modules (``geometry``, ``labels``, ``faults``, ``spec``) only."""

from activedefect.store.zarr_store import ORIGIN_KEY, REF_ENERGY_KEY, Store, StoreCorruptedError

__all__ = ["ORIGIN_KEY", "REF_ENERGY_KEY", "Store", "StoreCorruptedError"]
