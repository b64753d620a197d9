"""Stand-in for the VASP executable, used as the vasp backend's ``command`` in tests.

Run in a job folder, it reads INCAR, POSCAR and POTCAR, refuses inputs that VASP
would refuse (POTCAR species not matching POSCAR, NUPDOWN without ISPIN 2, NELECT
whose parity does not match NUPDOWN), computes energy, forces and stress with a
Lennard-Jones potential (plus 0.5 eV·q² so that the charge, q = ΣZVAL − NELECT, reaches
the energy) and writes a vasprun.xml for the job's own structure, in the layout
VASP 6 uses (ASE cannot write vasprun.xml).

Environment: ``FAKE_VASP_SCF_STEPS`` electronic steps the SCF needs (default 12; at
most NELM are written, as VASP does); ``FAKE_VASP_MODE`` = ``crash`` (exit 1, no
vasprun.xml), ``garbled`` (truncated vasprun.xml) or ``hang``.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from ase.calculators.lj import LennardJones
from ase.io import read
from ase.units import GPa


def read_incar(path: Path) -> dict[str, str]:
    tags = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].split("!")[0].strip()
        if "=" in line:
            key, value = line.split("=", 1)
            tags[key.strip().upper()] = value.strip()
    return tags


def fail(message: str) -> None:
    print(f" VERY BAD NEWS! {message}", flush=True)
    sys.exit(1)


def vector_lines(rows, indent: str) -> str:
    return "\n".join(f"{indent}<v>" + "".join(f" {x:16.8f}" for x in row) + " </v>" for row in rows)


def structure_xml(atoms, name: str | None) -> str:
    attr = f' name="{name}"' if name else ""
    return (
        f"  <structure{attr}>\n   <crystal>\n    <varray name=\"basis\">\n"
        f"{vector_lines(atoms.cell, '     ')}\n    </varray>\n"
        f"    <i name=\"volume\"> {atoms.get_volume():.8f} </i>\n   </crystal>\n"
        f"   <varray name=\"positions\">\n{vector_lines(atoms.get_scaled_positions(wrap=False), '    ')}\n"
        "   </varray>\n  </structure>"
    )


def energy_xml(energy: float, indent: str) -> str:
    return (
        f"{indent}<energy>\n{indent} <i name=\"e_fr_energy\"> {energy:.8f} </i>\n"
        f"{indent} <i name=\"e_wo_entrp\"> {energy:.8f} </i>\n{indent} <i name=\"e_0_energy\"> {energy:.8f} </i>\n"
        f"{indent}</energy>"
    )


def main() -> None:
    mode = os.environ.get("FAKE_VASP_MODE", "")
    if mode == "hang":
        time.sleep(600)
    if mode == "crash":
        fail("internal error in subroutine SGRCON: Found some non-integer element in rotation matrix")

    incar = read_incar(Path("INCAR"))
    atoms = read("POSCAR", format="vasp")
    potcar = Path("POTCAR").read_text()
    titels = re.findall(r"TITEL\s*=\s*PAW_PBE\s+(\S+)", potcar)
    zvals = [float(z) for z in re.findall(r"ZVAL\s*=\s*([-+0-9.]+)", potcar)]
    species = list(dict.fromkeys(atoms.get_chemical_symbols()))
    if titels != species:
        fail(f"POTCAR species {titels} do not match POSCAR {species}")
    counts = [atoms.get_chemical_symbols().count(s) for s in species]
    neutral = sum(z * n for z, n in zip(zvals, counts))
    nelect = float(incar.get("NELECT", neutral))
    ispin = int(incar.get("ISPIN", 1))
    nupdown = incar.get("NUPDOWN")
    if nupdown is not None and ispin != 2:
        fail("NUPDOWN needs ISPIN = 2")
    if nupdown is not None and (round(nelect) - int(nupdown)) % 2:
        fail(f"NELECT = {nelect} and NUPDOWN = {nupdown} differ in parity")
    nelm = int(incar.get("NELM", 60))
    steps = min(int(os.environ.get("FAKE_VASP_SCF_STEPS", 12)), nelm)

    charge = neutral - nelect
    atoms.calc = LennardJones(sigma=2.0, epsilon=0.05, rc=6.0, smooth=True)
    energy = atoms.get_potential_energy() + 0.5 * charge**2
    forces = atoms.get_forces()
    stress_kbar = -atoms.get_stress(voigt=False) / (0.1 * GPa)  # VASP's sign and unit

    scsteps = "\n".join(
        f"  <scstep>\n{energy_xml(energy + 10.0 ** (1 - i), '   ')}\n  </scstep>" for i in range(steps)
    )
    atom_rows = "\n".join(
        f"    <rc><c>{s:2s}</c><c>{species.index(s) + 1:4d}</c></rc>" for s in atoms.get_chemical_symbols()
    )
    type_rows = "\n".join(
        f"    <rc><c>{n:4d}</c><c>{s:2s}</c><c> 1.0 </c><c> {z:.8f}</c><c>  PAW_PBE {s}                       </c></rc>"
        for s, n, z in zip(species, counts, zvals)
    )
    text = f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<modeling>
 <generator>
  <i name="program" type="string">vasp </i>
  <i name="version" type="string">6.4.2 fake </i>
 </generator>
 <incar>
{chr(10).join(f'  <i name="{k}">{v}</i>' for k, v in incar.items())}
 </incar>
 <kpoints>
  <varray name="kpointlist">
   <v>       0.00000000       0.00000000       0.00000000 </v>
  </varray>
  <varray name="weights">
   <v>       1.00000000 </v>
  </varray>
 </kpoints>
 <parameters>
  <separator name="electronic">
   <i name="NELECT"> {nelect:.8f}</i>
   <separator name="electronic convergence">
    <i type="int" name="NELM"> {nelm}</i>
   </separator>
   <separator name="electronic spin">
    <i type="int" name="ISPIN"> {ispin}</i>
   </separator>
  </separator>
 </parameters>
 <atominfo>
  <atoms> {len(atoms)} </atoms>
  <types> {len(species)} </types>
  <array name="atoms">
   <dimension dim="1">ion</dimension>
   <field type="string">element</field>
   <field type="int">atomtype</field>
   <set>
{atom_rows}
   </set>
  </array>
  <array name="atomtypes">
   <dimension dim="1">type</dimension>
   <field type="int">atomspertype</field>
   <field type="string">element</field>
   <field>mass</field>
   <field>valence</field>
   <field type="string">pseudopotential</field>
   <set>
{type_rows}
   </set>
  </array>
 </atominfo>
{structure_xml(atoms, "initialpos")}
 <calculation>
{scsteps}
{structure_xml(atoms, None)}
  <varray name="forces">
{vector_lines(forces, '   ')}
  </varray>
  <varray name="stress">
{vector_lines(stress_kbar, '   ')}
  </varray>
{energy_xml(energy, '  ')}
 </calculation>
{structure_xml(atoms, "finalpos")}
</modeling>
"""
    if mode == "garbled":
        text = text[: text.index("<varray name=\"forces\">")]
    Path("vasprun.xml").write_text(text)
    print(f" fake VASP: {steps} electronic steps, E = {energy:.6f} eV", flush=True)


if __name__ == "__main__":
    main()
