"""Where the work runs: the Dask cluster (local or a job queue), the progress reporter and
the campaign's dashboard page.

May import: the foundation modules only."""
