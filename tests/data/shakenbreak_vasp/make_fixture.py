"""Write the ShakeNBreak-from-VASP fixture in this folder: small vasprun.xml files (CdTe
8-atom cell, V_Cd and Te_Cd) laid out as ShakeNBreak does, and expected.json with the
numbers each file holds. Run ``python tests/data/shakenbreak_vasp/make_fixture.py`` to
regenerate.

The files hold only what ASE's vasp-xml reader and activedefect.oracle.importers read
(generator, parameters, atominfo, kpoints, initial structure, ionic steps); every
number is in expected.json so the test checks the importer against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
A = 6.48  # Å, CdTe conventional cell
CD = [(0.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5), (0.5, 0.5, 0.0)]
TE = [(x + 0.25, y + 0.25, z + 0.25) for x, y, z in CD]
ZVAL = {"Cd": 12.0, "Te": 6.0}

#: folder, defect, NELECT, ionic steps written, whether the run was cut off mid-step.
RUNS = [
    ("v_Cd_-1/Unperturbed", "v_Cd", 61, 2, False),
    ("v_Cd_-1/Bond_Distortion_-30.0%", "v_Cd", 61, 3, False),
    ("v_Cd_-1/Bond_Distortion_-40.0%_from_0", "v_Cd", 61, 1, False),
    ("v_Cd_0/Dimer", "v_Cd", 60, 2, False),
    ("v_Cd_0/Rattled", "v_Cd", 60, 2, True),
    ("Te_Cd_+1/Unperturbed", "Te_Cd", 65, 2, False),
    ("v_Cd_-2/Unperturbed", "v_Cd", 61, 1, False),  # NELECT says -1: the importer skips it
]


def structure(defect: str) -> tuple[list[str], np.ndarray]:
    if defect == "v_Cd":
        return ["Cd"] * 3 + ["Te"] * 4, np.array(CD[1:] + TE)
    return ["Cd"] * 3 + ["Te"] * 5, np.array(CD[1:] + [CD[0]] + TE)


def vec(values) -> str:
    return " ".join(f"{v:16.8f}" for v in values)


def varray(name: str, rows) -> str:
    body = "\n".join(f"   <v>{vec(r)} </v>" for r in rows)
    return f'  <varray name="{name}" >\n{body}\n  </varray>'


def crystal(indent: str = "  ") -> str:
    return f"{indent}<crystal>\n{varray('basis', np.eye(3) * A)}\n  <i name=\"volume\">{A**3:.8f}</i>\n{indent}</crystal>"


def energy_block(e_fr: float, e_0: float) -> str:
    return (f'   <energy>\n    <i name="e_fr_energy">{e_fr:16.8f}</i>\n'
            f'    <i name="e_wo_entrp">{e_0:16.8f}</i>\n    <i name="e_0_energy">{e_0:16.8f}</i>\n   </energy>')


def write_run(index: int, folder: str, defect: str, nelect: int, n_steps: int, cut: bool) -> dict:
    species, frac = structure(defect)
    types = sorted(set(species), key=species.index)
    rng = np.random.default_rng(index)
    pattern = rng.normal(0.0, 1.0, frac.shape)
    steps = []
    for k in range(n_steps):
        positions = frac + (0.004 * (index + 1) - 0.001 * k) * pattern / A
        e_fr = -100.0 - 0.25 * index - 0.05 * k
        steps.append({
            "frac": positions.tolist(),
            "free_energy": e_fr,
            "energy": e_fr + 0.002,  # sigma -> 0
            "forces": (-0.3 * (1.0 - k / n_steps) * pattern).round(6).tolist(),
            "stress_kB": [[1.0 + k, 0.1, 0.2], [0.1, 2.0, 0.3], [0.2, 0.3, 3.0 - k]],
        })
    head = f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<modeling>
 <generator>
  <i name="program" type="string">vasp </i>
  <i name="version" type="string">6.4.2  </i>
 </generator>
 <incar>
  <i type="string" name="SYSTEM">{folder}</i>
  <i name="NELECT">     {nelect:.8f}</i>
 </incar>
 <kpoints>
  <generation param="Gamma">
   <v type="int" name="divisions">       1        1        1 </v>
  </generation>
{varray('kpointlist', [[0.0, 0.0, 0.0]])}
{varray('weights', [[1.0]])}
 </kpoints>
 <parameters>
  <separator name="electronic" >
   <i name="NELECT">     {nelect:.8f}</i>
   <separator name="electronic spin" >
    <i type="int" name="ISPIN">     2</i>
    <i name="NUPDOWN">     -1.00000000</i>
   </separator>
  </separator>
 </parameters>
 <atominfo>
  <atoms>{len(species)}</atoms>
  <types>{len(types)}</types>
  <array name="atoms" >
   <dimension dim="1">ion</dimension>
   <field type="string">element</field>
   <field type="int">atomtype</field>
   <set>
{chr(10).join(f'    <rc><c>{s:2s}</c><c>{types.index(s) + 1:4d}</c></rc>' for s in species)}
   </set>
  </array>
  <array name="atomtypes" >
   <dimension dim="1">type</dimension>
   <field type="int">atomspertype</field>
   <field type="string">element</field>
   <field>mass</field>
   <field>valence</field>
   <field type="string">pseudopotential</field>
   <set>
{chr(10).join(f'    <rc><c>{species.count(t):4d}</c><c>{t:2s}</c><c>1.0</c><c>{ZVAL[t]:.8f}</c><c>PAW_PBE {t}</c></rc>' for t in types)}
   </set>
  </array>
 </atominfo>
 <structure name="initialpos" >
{crystal()}
{varray('positions', steps[0]['frac'])}
 </structure>
"""
    blocks = []
    for k, step in enumerate(steps):
        scf = energy_block(step["free_energy"] + 0.01, step["energy"] + 0.01)
        if cut and k == n_steps - 1:  # killed during the SCF of the last step
            blocks.append(f" <calculation>\n  <scstep>\n{scf}\n  </scstep>\n  <scstep>\n   <energy>\n")
            break
        blocks.append(f""" <calculation>
  <scstep>
{scf}
  </scstep>
  <scstep>
{energy_block(step["free_energy"], step["energy"])}
  </scstep>
  <structure>
{crystal()}
{varray('positions', step['frac'])}
  </structure>
{varray('forces', step['forces'])}
{varray('stress', step['stress_kB'])}
{energy_block(step["free_energy"], step["energy"])}
 </calculation>
""")
    text = head + "".join(blocks) + ("" if cut else "</modeling>\n")
    path = HERE / folder / "vasprun.xml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    done = steps[:-1] if cut else steps
    return {"defect": defect, "nelect": nelect, "cell_A": A, "steps": done}


def main() -> None:
    expected = {folder: write_run(i, folder, *rest) for i, (folder, *rest) in enumerate(RUNS)}
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
