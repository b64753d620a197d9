"""The oracle: DFT/xTB backends, the worker tasks that label and relax with them, the
step journal of a running relaxation, pyiron execution, importers of past calculations.

May import: the foundation modules, ``execution`` and ``store``."""
