"""Shared test setup: one thread per process (MACE and tblite are many times slower with
two on this kind of machine), and headless matplotlib."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from campaign_support import SPEC, Driver, write_spec  # noqa: E402


# --------------------------------------------------------------------- shared campaign
@pytest.fixture(scope="session")
def shared_run(tmp_path_factory) -> Driver:
    """The session's campaign, started (not finished): the CLI in a subprocess."""
    root = tmp_path_factory.mktemp("campaign")
    spec = write_spec(root / "spec" / "tiny.yaml", SPEC)
    driver = Driver(["campaign", "start", str(spec), "--dir", str(root / "run")], root / "run", root / "driver.log")
    yield driver
    driver.kill()


@pytest.fixture(scope="session")
def finished(shared_run: Driver) -> Path:
    """The session's campaign, run to its stop reason; its directory."""
    rc = shared_run.wait()
    assert rc == 0, f"campaign failed (rc {rc}):\n{shared_run.output()[-4000:]}"
    return shared_run.directory


def pytest_collection_modifyitems(items) -> None:  # noqa: ANN001
    """Tests that watch the session's campaign while it runs go first: any test module
    that reads the finished campaign (``finished``) would otherwise wait for it to end."""
    watching = [item for item in items if "shared_run" in getattr(item, "fixturenames", ())
                and "finished" not in item.fixturenames]
    items[:] = watching + [item for item in items if item not in watching]
