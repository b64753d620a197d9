"""The campaign spec: valid specs load with defaults; each kind of bad input is a clear
error naming the field, raised before any work starts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ase.build import bulk
from ase.io import write

from activedefect.spec import SpecError, load_spec

VALID = {
    "name": "sic-v-si",
    "host": {"structure": "SiC_prim.vasp", "supercell": [2, 2, 2], "oxidation_states": {"Si": 4, "C": -4}},
    "defects": [{"vacancy": "Si", "charges": [0, -1, -2]}],
    "distortions": {},
    "fidelities": {
        "low": {"backend": "xtb", "settings": {"method": "GFN1-xTB", "electronic_temperature": 5000}},
        "high": {"backend": "xtb", "settings": {"method": "GFN1-xTB", "electronic_temperature": 1000,
                                                 "max_iterations": 500}},
    },
    "multiplicity": {},
    "host_check": {"max_drop_eV_per_atom": 0.01},
    "committee": {},
    "policies": [],
    "budget": {"low": 2000, "high": 200, "generations": 20},
    "cluster": {"workers": 2},
}


def write_spec(tmp_path: Path, data: dict) -> Path:
    write(tmp_path / "SiC_prim.vasp", bulk("SiC", "zincblende", a=4.36), format="vasp")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_spec_loads_with_defaults_and_absolute_paths(tmp_path):
    spec = load_spec(write_spec(tmp_path, VALID))
    assert spec.name == "sic-v-si"
    assert spec.host.structure == (tmp_path / "SiC_prim.vasp").resolve()
    assert spec.defects[0].vacancy == "Si" and spec.defects[0].charges == [0, -1, -2]
    assert spec.fidelities["high"].settings["max_iterations"] == 500
    committee = spec.committee  # the measured recipe (docs/benchmarks.md, "Defaults")
    assert (committee.size, committee.bootstrap, committee.model.num_channels, committee.trajectory_stride) == (2, False, 16, 3)
    assert (committee.hot_force_eV_A, committee.ema_decay, committee.sparse_head_ratio) == (1.0, 0.99, 5.0)
    assert not committee.sample_by_weight  # opt-in until measured in the loop
    assert (spec.exploration.start_head, spec.exploration.trust_relative) == ("low", 0.5)
    assert spec.convergence.rmsd == 0.05 and spec.convergence.patience == 2
    assert spec.convergence.confirm.fmax == 0.02 and spec.convergence.confirm.steps == 200


def _set(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


_DELETE = object()

BAD = [
    ("name", "../../etc", "name"),
    ("name", _DELETE, "name: required key is missing"),
    ("colour", "blue", "colour: unknown key"),
    ("host.supercell", [2, 2], "host.supercell"),
    ("host.structure", "missing.vasp", "host.structure: file"),
    ("defects", [], "defects"),
    ("defects.0.vacancy", 3, "defects.0.vacancy"),
    ("defects.0.charges", [0, 0], "repeat a charge state"),
    ("fidelities.low.backend", "castep", "fidelities.low.backend"),
    ("fidelities.low.settings", {"methd": "GFN1-xTB"}, "methd"),
    ("fidelities.high", _DELETE, "fidelities"),
    ("budget.low", "many", "budget.low"),
    ("exploration", {"fmax_eV_A": 0.05}, "exploration.fmax_eV_A (0.05) must be below convergence.max_force"),
    ("multiplicity", {"v_Si_-1": 0}, "multiplicity"),
    ("cluster", {"address": "tcp://x:1", "jobqueue": {"kind": "slurm"}}, "cluster"),
    ("policies", ["stratified-hi"], "policies.0: unknown policy preset"),
    ("policies", [{"kind": "uncertainty", "trust_lo": 0.5, "trust_hi": 0.1}], "policies.0"),
    ("fidelities.low.executor", "slurm", "fidelities.low.executor"),
]


@pytest.mark.parametrize("field,value,expected", BAD, ids=[b[0] + "-" + str(i) for i, b in enumerate(BAD)])
def test_bad_spec_is_a_clear_error_naming_the_field(tmp_path, field, value, expected):
    data = copy.deepcopy(VALID)
    if field != "colour":
        data = _set(data, field, value)
    else:
        data["colour"] = value
    with pytest.raises(SpecError) as error:
        load_spec(write_spec(tmp_path, data))
    assert expected in str(error.value)


def test_not_yaml_and_not_a_mapping(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(path)


def test_policy_files_are_inlined_relative_to_the_spec(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tight.yaml").write_text("kind: uncertainty\ntrust_lo: 0.02\ntrust_hi: 0.2\n")
    data = copy.deepcopy(VALID)
    data["policies"] = ["bootstrap", "mine/tight.yaml"]
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.policies[0] == "bootstrap"
    inlined = spec.policies[1]
    assert inlined["kind"] == "uncertainty" and inlined["trust_lo"] == 0.02 and inlined["name"] == "tight"
