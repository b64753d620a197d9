"""The search: committee relaxations of the seeds, basins, the `low`-minima screen, the
selection policies, and one generation's explore and select steps.

May import: the foundation modules, ``execution``, ``store``, ``oracle``, ``seeds`` and
``model``."""
