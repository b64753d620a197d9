"""The package's layout is the loop (docs/contributing-notes.md): each folder imports only
the stages below it, no module imports itself back through others, every module keeps to
one job (at most ``MAX_MODULE_LINES`` lines), and what users type
(`from activedefect import Campaign`, the policy presets) works from the installed package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import activedefect

PACKAGE = Path(activedefect.__file__).parent
FOUNDATION = {"geometry", "labels", "faults", "spec", "spec_blocks"}

#: Stage -> the stages its modules may import (besides their own). The map in
#: docs/contributing-notes.md, checked.
BELOW = {
    "foundation": set(),
    "execution": {"foundation"},
    "store": {"foundation"},
    "oracle": {"foundation", "execution", "store"},
    "seeds": {"foundation", "execution", "store", "oracle"},
    "model": {"foundation", "execution", "store"},
    "search": {"foundation", "execution", "store", "oracle", "seeds", "model"},
    "results": {"foundation", "execution", "store", "oracle", "seeds", "model", "search"},
    "campaign": {"foundation", "execution", "store", "oracle", "seeds", "model", "search", "results"},
    "cli": {"foundation", "execution", "store", "oracle", "seeds", "model", "search", "results", "campaign"},
}
#: Loading a spec file checks its names against two registries (a function-level import each).
SPEC_REGISTRIES = {"activedefect.search.policies", "activedefect.oracle.backends"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in FOUNDATION:
        return "foundation"
    return parts[1] if len(parts) > 1 else "api"


def imports(path: Path) -> set[str]:
    """Every activedefect module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("activedefect"):
            for alias in node.names:  # `from activedefect.oracle import journal` imports a module
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("activedefect")}
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if stage(m) != "api"))
def test_a_module_imports_only_the_stages_below_its_own(module):
    own = stage(module)
    wrong = sorted(
        target for target in imports(MODULES[module])
        if stage(target) not in BELOW[own] | {own}
        and not (module == "activedefect.spec" and target in SPEC_REGISTRIES)
    )
    assert not wrong, f"{module} ({own}) imports {wrong}; it may import {sorted(BELOW[own])}"


MAX_MODULE_LINES = 400


def test_every_module_is_small_enough_to_have_one_job():
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert len(sizes) > 40
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_no_module_imports_itself_back_through_others():
    graph = {m: {t for t in imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ importing its own modules is how it exports them, not a cycle
    graph = {m: {t for t in targets if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
             for m, targets in graph.items()}
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for target in graph[node]:
                if target == start:
                    cycles.append(" -> ".join(path + [start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, path + [target]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles)[:10])


def test_the_layout_checks_catch_a_reach_back(tmp_path):
    reaching = tmp_path / "reach.py"
    reaching.write_text("def f():\n    from activedefect.campaign.loop import Campaign\n")
    assert stage(next(iter(imports(reaching)))) == "campaign"
    assert "campaign" not in BELOW["results"]


def test_the_public_api_is_what_users_type():
    from activedefect import Baseline, Campaign, CampaignResults, load_spec
    from activedefect.campaign import Campaign as from_the_old_path
    from activedefect.results.campaign_results import CampaignResults as results_class
    from activedefect.spec import load_spec as spec_loader

    assert Campaign is from_the_old_path and issubclass(Baseline, Campaign)
    assert CampaignResults is results_class and load_spec is spec_loader
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        activedefect.Nope  # noqa: B018


def test_the_policy_presets_are_the_top_level_policies_folder():
    from activedefect.search.policies import load_policy, preset_names

    folder = PACKAGE.parent / "policies"
    assert preset_names() == sorted(p.stem for p in folder.glob("*.yaml"))
    for name in preset_names():
        assert load_policy(name).name
        assert (folder / f"{name}.yaml").read_text().lstrip().startswith("#"), f"{name}.yaml explains itself"


@pytest.mark.slow
def test_the_wheel_ships_the_policy_presets(tmp_path):
    """`pip install .` users get the presets: the wheel built from the package, the
    `policies/` folder and the project files holds every preset as `activedefect/policy_presets/`."""
    import shutil
    import subprocess
    import sys
    import zipfile

    root, source = PACKAGE.parent, tmp_path / "source"
    for name in ("activedefect", "policies"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], cwd=source, check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("activedefect-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    presets = sorted(p.name for p in (root / "policies").glob("*.yaml"))
    assert presets and {f"activedefect/policy_presets/{name}" for name in presets} <= shipped


def test_the_cli_and_the_driver_import_without_the_model():
    """`campaign status --json` prints JSON only: MACE prints on import, and torch takes seconds."""
    import subprocess
    import sys

    code = ("import sys, activedefect.cli, activedefect.campaign, activedefect.results.directory; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mace', 'e3nn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
