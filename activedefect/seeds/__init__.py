"""Seeds: the host supercell, the defects and their ShakeNBreak distortions, the host check.

May import: the foundation modules (``geometry``, ``labels``, ``faults``, ``spec``),
``execution``, ``store`` and ``oracle``."""
