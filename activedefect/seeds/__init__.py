"""Seeds: the host supercell, the defects and their ShakeNBreak distortions, the host check.

May import: the foundation modules (``geometry``, ``labels``, ``faults``, ``spec``, ``spec_blocks``),
``execution``, ``store`` and ``oracle``."""
