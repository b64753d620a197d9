"""Results, read from a campaign directory: ground states, minima, transition levels,
history, the report, and the files users take away.

May import: everything below ``campaign`` (``search``, ``model``, ``seeds``, ``oracle``,
``store``, ``execution``, the foundation modules)."""
