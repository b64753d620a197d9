"""`activedefect` command line: start, resume, watch and take results from a campaign."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from activedefect.geometry import format_charge
from activedefect.spec import SpecError

app = typer.Typer(help="Active learning of charged point-defect ground states.", no_args_is_help=True)
campaign_app = typer.Typer(help="Start, resume, watch and export campaigns.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")
bench_app = typer.Typer(help="Compare a campaign with the brute-force baseline.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()


# Cluster options shared by every command that runs a loop (start, baseline, resume).
Workers = Annotated[Optional[int], typer.Option(help="LocalCluster workers (default: spec cluster.workers)")]
Scheduler = Annotated[Optional[str], typer.Option(help="address of an existing Dask scheduler")]
DashboardAddress = Annotated[Optional[str], typer.Option(help="dashboard address, e.g. :8787")]
CreateOnly = Annotated[bool, typer.Option("--create-only", help="create the directory (e.g. to import data) and stop")]


class RichReporter:
    """Progress bars for labelling, training, exploration; messages above them."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None

    def start(self, phase: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(phase, total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def message(self, text: str) -> None:
        self.progress.console.log(text)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}")  # a message is text, not markup
    raise typer.Exit(code=2)


def _ground_state_table(status: dict) -> Table:
    table = Table(title=f"Ground states of {status['name']} (stop reason: {status['stop_reason']})")
    for column in ("defect", "charge", "predicted E (eV)", "high E (eV)", "converged", "structure"):
        table.add_column(column)
    for gs in status["ground_states"]:
        table.add_row(
            gs["defect"], format_charge(gs["charge"]),
            "—" if gs["predicted_energy_eV"] is None else f"{gs['predicted_energy_eV']:.4f}",
            "—" if gs["high_energy_eV"] is None else f"{gs['high_energy_eV']:.4f}",
            "yes" if gs["converged"] else "no", gs["structure"] or "—",
        )
    return table


def _run(campaign, workers: Optional[int], scheduler: Optional[str], dashboard_address: Optional[str]) -> None:  # noqa: ANN001
    from activedefect.seeds.hostcheck import HostUnstableError
    from activedefect.store.workspace import CampaignLockedError
    from activedefect.store.zarr_store import StoreCorruptedError

    def announce(handle) -> None:  # noqa: ANN001
        console.print(f"Dask dashboard: [link={handle.dashboard_link}]{handle.dashboard_link}[/link]")
        if handle.campaign_page:
            console.print(f"Campaign page:  [link={handle.campaign_page}]{handle.campaign_page}[/link]")
        else:
            console.print("Campaign page:  not served (the reason is in the campaign's events.jsonl)")

    try:
        with _progress() as progress:
            status = campaign.run(workers=workers, scheduler=scheduler, dashboard_address=dashboard_address,
                                  reporter=RichReporter(progress), on_cluster=announce)
    except (CampaignLockedError, HostUnstableError, StoreCorruptedError) as error:
        _fail(str(error))
    except KeyboardInterrupt:
        console.print(f"interrupted; resume with `activedefect campaign resume {campaign.ws.root}`")
        raise typer.Exit(code=130) from None
    console.print(_ground_state_table(status))
    console.print(f"oracle calls: low {status['oracle']['low']['calls']}, high {status['oracle']['high']['calls']}; "
                  f"campaign directory: {campaign.ws.root}")


@campaign_app.command("start")
def start(
    spec: Path = typer.Argument(..., help="campaign spec (YAML)"),
    dir: Optional[Path] = typer.Option(None, "--dir", help="campaign directory (default runs/<name>)"),
    workers: Workers = None,
    scheduler: Scheduler = None,
    dashboard_address: DashboardAddress = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="validate, host-check, count seeds, estimate cost; no loop"),
    create_only: CreateOnly = False,
) -> None:
    """Validate SPEC, create the campaign directory and run the loop to convergence."""
    from activedefect.campaign.loop import Campaign
    from activedefect.store.workspace import CampaignLockedError

    logging.basicConfig(level=logging.WARNING)
    try:
        if dry_run:
            from activedefect.campaign.dryrun import dry_run as run_dry

            report = run_dry(spec)
            console.print(report.table())
            return
        campaign = Campaign.create(spec, dir)
    except (SpecError, FileExistsError, CampaignLockedError) as error:
        _fail(str(error))
    _run_unless_create_only(campaign, create_only, workers, scheduler, dashboard_address)


@campaign_app.command("baseline")
def baseline(
    spec: Path = typer.Argument(..., help="campaign spec (YAML); its seeds and `high` fidelity are used"),
    dir: Optional[Path] = typer.Option(None, "--dir", help="baseline directory (default runs/<name>-baseline)"),
    workers: Workers = None,
    scheduler: Scheduler = None,
    dashboard_address: DashboardAddress = None,
    create_only: CreateOnly = False,
) -> None:
    """Relax every seed of SPEC with the `high` backend directly (the brute-force ShakeNBreak
    search); resumable with `campaign resume DIR`. With --create-only, import earlier
    `high` labels first (`campaign import`): its relaxations replay them."""
    from activedefect.campaign.baseline import Baseline
    from activedefect.spec import load_spec

    logging.basicConfig(level=logging.WARNING)
    from activedefect.store.workspace import CampaignLockedError

    try:
        run = Baseline.create(spec, dir or Path("runs") / f"{load_spec(spec).name}-baseline")
    except (SpecError, FileExistsError, CampaignLockedError) as error:
        _fail(str(error))
    _run_unless_create_only(run, create_only, workers, scheduler, dashboard_address)


def _run_unless_create_only(campaign, create_only: bool, *cluster) -> None:  # noqa: ANN001 - a Campaign
    if create_only:
        console.print(f"created {campaign.ws.root}; run it with `activedefect campaign resume {campaign.ws.root}`")
        return
    _run(campaign, *cluster)


@campaign_app.command("resume")
def resume(
    dir: Path = typer.Argument(..., help="campaign directory"),
    workers: Workers = None,
    scheduler: Scheduler = None,
    dashboard_address: DashboardAddress = None,
) -> None:
    """Continue a campaign after a crash, a kill, Ctrl-C or a walltime stop."""
    from activedefect.campaign.loop import Campaign

    try:
        campaign = Campaign.open(dir)
    except (FileNotFoundError, SpecError) as error:
        _fail(str(error))
    _run(campaign, workers, scheduler, dashboard_address)


@campaign_app.command("status")
def status(
    dir: Path = typer.Argument(..., help="campaign directory"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Generation, oracle calls and ground states of a campaign (running or not)."""
    from activedefect.campaign.loop import Campaign

    try:
        result = Campaign.open(dir).status()
    except (FileNotFoundError, SpecError) as error:
        _fail(str(error))
    if as_json:
        typer.echo(json.dumps(result))
        return
    done = f"generation {result['generation']} done" if result["generation"] >= 0 else "no generation done yet"
    working = "" if result["working_on"] is None else f", working on generation {result['working_on']}"
    console.print(f"{result['name']}: {done}{working}, phase {result['phase']}")
    for fidelity, oracle in result["oracle"].items():
        budget = result["budget"][fidelity]
        console.print(f"  {fidelity}: {oracle['calls']} calls of {budget} ({oracle['failures']} failed), "
                      f"{oracle['seconds']:.1f} s")
    console.print(f"  confirm: {result['confirm_calls']} high calls of {result['budget']['confirm_high']} "
                  "(included in the high calls above)")
    console.print(_ground_state_table(result))


@campaign_app.command("import")
def import_labels(
    dir: Path = typer.Argument(..., help="campaign directory (see `start --create-only`)"),
    source: Path = typer.Argument(..., help="extxyz file or ShakeNBreak output folder with vasprun.xml files"),
    fidelity: str = typer.Option(..., help="fidelity these labels belong to: low or high"),
) -> None:
    """Import labelled structures (past DFT work) as labels of FIDELITY."""
    from activedefect.campaign.loop import Campaign

    campaign = Campaign.open(dir)
    if fidelity not in campaign.spec.fidelities:
        _fail(f"--fidelity {fidelity!r} is not one of {sorted(campaign.spec.fidelities)}")
    added = campaign.import_labels(source, fidelity)
    console.print(f"imported {added} {fidelity} labels from {source}")


@campaign_app.command("export")
def export(
    dir: Path = typer.Argument(..., help="campaign directory"),
    out: Path = typer.Option(..., "--out", help="folder to write to"),
) -> None:
    """Write labelled data (extxyz per fidelity), ground states and the final committee."""
    from activedefect.campaign.loop import Campaign

    written = Campaign.open(dir).export(out)
    for path in written:
        console.print(f"wrote {path}")


@bench_app.command("compare")
def compare(
    campaign_dir: Path = typer.Argument(..., help="a finished campaign directory"),
    baseline_dir: Path = typer.Argument(..., help="the baseline directory of the same spec"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder for comparison.md/.json (default CAMPAIGN_DIR/bench)"),
) -> None:
    """Check-relax each campaign ground state with `high` and compare with the baseline:
    energies, RMSD, oracle calls and seconds, and their ratios."""
    from activedefect.campaign.compare import compare as run_compare

    try:
        comparison = run_compare(campaign_dir, baseline_dir)
    except (FileNotFoundError, SpecError, ValueError) as error:
        _fail(str(error))
    console.print(comparison.markdown())
    for path in comparison.write(out or Path(campaign_dir) / "bench"):
        console.print(f"wrote {path}")


@campaign_app.command("job-scripts")
def job_scripts(
    spec: Path = typer.Argument(..., help="campaign spec (YAML) with a cluster.jobqueue block"),
    scheduler: str = typer.Option("tcp://SCHEDULER:8786", help="scheduler address the workers join"),
    out: Optional[Path] = typer.Option(None, "--out", help="write <pool>.sh files here instead of printing"),
) -> None:
    """Print (or write) the batch script of each worker pool; nothing is submitted."""
    from activedefect.execution.jobqueue import job_scripts as scripts_for
    from activedefect.spec import load_spec

    try:
        loaded = load_spec(spec)
    except SpecError as error:
        _fail(str(error))
    if loaded.cluster.jobqueue is None:
        _fail(f"{spec} has no cluster.jobqueue block; see docs/hpc.md")
    for pool, script in scripts_for(loaded.cluster.jobqueue, scheduler).items():
        if out is None:
            typer.echo(f"# --- pool {pool}\n{script}")
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{pool}.sh").write_text(script)
            console.print(f"wrote {out / f'{pool}.sh'}")


@campaign_app.command("report")
def report(
    dir: Path = typer.Argument(..., help="campaign directory"),
    out: Optional[Path] = typer.Option(None, "--out", help="folder (default DIR/report)"),
) -> None:
    """Figures (PNG, SVG), their data (JSON), tables and an index.html that opens from disk."""
    from activedefect.campaign.loop import Campaign

    try:
        campaign = Campaign.open(dir)
    except (FileNotFoundError, SpecError) as error:
        _fail(str(error))
    if not campaign.ws.read_state().get("ground_states"):
        _fail(f"{dir} has no ground states yet: run the campaign past its first exploration first")
    page = campaign.report(out)
    console.print(f"wrote {page}")


if __name__ == "__main__":
    app()
