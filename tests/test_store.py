"""The Zarr store on disk: frames, labels, reopening, SIGKILL mid-append, damaged files,
a full disk, extxyz, and the ShakeNBreak/VASP importer.

Run as a script, this file is the child process that the SIGKILL and full-disk tests use:
``python tests/test_store.py STORE [--batches N] [--kill-at TABLE:POINT] [--max-file-bytes N]``.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import ase.io
import numpy as np
import pytest
import zarr
from ase import Atoms, units
from ase.build import bulk

from activedefect.faults import ENV as KILL_HOOK_ENV
from activedefect.geometry import content_hash
from activedefect.labels import LabelResult, settings_hash
from activedefect.oracle.importers import (
    import_shakenbreak_vasp,
    parse_defect_folder,
    read_vasprun_header,
)
from activedefect.store.zarr_store import Store, StoreCorruptedError

SH = settings_hash("xtb", {"method": "GFN1-xTB"})
FIXTURE = Path(__file__).parent / "data" / "shakenbreak_vasp"


# --------------------------------------------------------------------- deterministic data
def make_frame(i: int) -> Atoms:
    """Frame i of the writer: 5..11 atoms, charge and spin from i, random positions."""
    rng = np.random.default_rng(1000 + i)
    n = 5 + i % 7
    atoms = Atoms(numbers=rng.integers(1, 30, n), positions=rng.uniform(0, 6, (n, 3)), cell=np.eye(3) * 6.0 + 0.01 * i, pbc=True)
    atoms.info.update(total_charge=i % 3 - 1, total_spin=1 + i % 2, defect=f"v_X{i % 4}",
                      origin={"seed": f"Bond_Distortion_{i}%", "generation": i // 10, "trajectory": i % 5, "step": i})
    return atoms


def make_label(i: int, n_atoms: int) -> LabelResult:
    """Label of frame i: every third a failure."""
    if i % 3 == 2:
        return LabelResult.failure("scf_not_converged", SH, f"frame {i}", wall_s=0.5, retries=1)
    rng = np.random.default_rng(i)
    return LabelResult("ok", SH, -10.0 - 0.1 * i, rng.normal(size=(n_atoms, 3)),
                       metadata={"code": "tblite", "version": "0.8.0", "wall_s": 0.2, "retries": 0})


def random_frames(n: int, n_atoms: int = 60, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    host = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 2, 2))
    frames = []
    for k in range(n):
        atoms = host[:n_atoms].copy()
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        atoms.info.update(total_charge=-1 + k % 3, total_spin=1 + k % 2, defect="v_Si")
        frames.append(atoms)
    return frames


def writer(path: str, batches: int, kill_at: str | None, batch: int = 4) -> None:
    """Child: append frames i, then label every frame not labelled yet (label row r is
    frame r), and print the counts after each batch; after ``batches`` batches, arm the
    kill hook (if given) for the next append."""
    with Store.open(path) as store:
        k = 0
        while True:
            if kill_at and k == batches:
                os.environ[KILL_HOOK_ENV] = f"store:{kill_at}"
            start = store.n_frames
            assert store.add_frames([make_frame(i) for i in range(start, start + batch)]) == list(range(start, start + batch))
            todo = range(store.n_labels("xtb"), store.n_frames)
            store.add_labels("xtb", [(i, make_label(i, len(make_frame(i)))) for i in todo])
            print(store.n_frames, store.n_labels("xtb"), flush=True)
            k += 1
            if not kill_at and k >= batches > 0:
                return


def run_writer(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, str(path), *args], stdout=subprocess.PIPE, text=True)


def assert_consistent(path: Path, min_frames: int, min_labels: int) -> None:
    """Reopen for writing (rolls back), then: every committed frame and label is exactly
    what the writer wrote, hashes are unique, array lengths match the offsets."""
    with Store.open(path) as store:
        n = store.n_frames
        assert n >= min_frames
        for i, atoms in enumerate(store.get_frames()):
            want = make_frame(i)
            assert np.array_equal(atoms.numbers, want.numbers)
            assert np.allclose(atoms.positions, want.positions, atol=1e-8)
            assert atoms.info["total_charge"] == want.info["total_charge"] and atoms.info["origin"]["step"] == i
        hashes = store.frame_table()["hash"]
        assert hashes.is_unique and all(store.frame_index(h) == i for i, h in enumerate(hashes))
        table = store.label_table("xtb") if "xtb" in store.fidelities() else None
        m = 0 if table is None else len(table)
        assert m >= min_labels and m <= n
        for row in range(m):  # the writer labels frame i in row i
            assert table.loc[row, "frame"] == row
            want = make_label(row, len(make_frame(row)))
            assert table.loc[row, "status"] == want.status
            if want.ok:
                assert table.loc[row, "energy_eV"] == want.energy_eV
                assert np.array_equal(store.label_forces("xtb", row), want.forces_eV_A)
            else:
                assert np.isnan(table.loc[row, "energy_eV"]) and store.failed_attempts("xtb", row, SH) == 1
        n_atoms = int(store.frame_table()["n_atoms"].sum())
    root = zarr.open_group(path, mode="r")
    frames = root["frames"]
    assert frames["offsets"].shape == (n + 1,) and frames["offsets"][-1] == n_atoms
    assert frames["positions"].shape == (n_atoms, 3) and frames["numbers"].shape == (n_atoms,)
    assert all(frames[k].shape[0] == n for k in ("cell", "pbc", "charge", "hash", "defect", "seed", "step"))
    if m:
        labels = root["labels"]["xtb"]
        n_forces = sum(len(make_frame(r)) for r in range(m) if r % 3 != 2)
        assert labels["force_offsets"].shape == (m + 1,) and labels["force_offsets"][-1] == n_forces
        assert labels["forces"].shape == (n_forces, 3)
        assert all(labels[k].shape[0] == m for k in ("frame", "energy", "status", "settings_hash", "metadata", "stress"))


# --------------------------------------------------------------------- frames
def test_frames_round_trip_and_dedupe(tmp_path):
    frames = [make_frame(i) for i in range(6)] + random_frames(2)
    frames[7].info.pop("defect")  # no defect, no origin
    with Store.open(tmp_path / "s") as store:
        assert store.add_frames(frames[:5]) == [0, 1, 2, 3, 4]
        # duplicates within a batch and against the store return the existing index
        assert store.add_frames([frames[5], frames[0], frames[5], frames[6], frames[7]]) == [5, 0, 5, 6, 7]
        assert store.n_frames == 8
        back = store.get_frames()
        assert store.get_frames([7, 2]) == [back[7], back[2]]
        for i, (want, got) in enumerate(zip(frames, back)):
            assert len(got) == len(want) and np.array_equal(got.numbers, want.numbers)
            assert np.allclose(got.positions, want.positions, atol=5e-9)
            assert np.allclose(got.cell, want.cell, atol=5e-9) and np.array_equal(got.pbc, want.pbc)
            assert got.info["total_charge"] == want.info["total_charge"]
            assert got.info["total_spin"] == want.info["total_spin"]
            assert got.info.get("defect") == want.info.get("defect")
            assert got.info.get("origin") == want.info.get("origin")
            assert got.info["frame"] == i and store.frame_index(got.info["hash"]) == i
            assert got.info["hash"] == content_hash(got)
        table = store.frame_table()
        assert list(table.columns) == ["frame", "hash", "defect", "charge", "multiplicity", "n_atoms", "seed",
                                       "generation", "trajectory", "step"]
        assert table["n_atoms"].tolist() == [len(a) for a in frames]
        assert table.loc[3, "seed"] == "Bond_Distortion_3%" and table.loc[3, "trajectory"] == 3
        assert table["seed"].isna().tolist() == table["step"].isna().tolist() == [False] * 6 + [True] * 2
        # same structure, other charge or spin: another frame
        charged = frames[0].copy()
        charged.info["total_charge"] = 2
        assert store.add_frames([charged]) == [8]


def test_hash_survives_extxyz_round_trip(tmp_path):
    """Raw 60-atom frames hashed on extxyz's 1e-8 Å grid: ~1 in 9 such frames would get
    another geometry.content_hash after an extxyz round trip without it."""
    frames = random_frames(40, seed=0)
    with Store.open(tmp_path / "s") as store:
        indices = store.add_frames(frames)
        ase.io.write(tmp_path / "raw.extxyz", frames)
        ase.io.write(tmp_path / "stored.extxyz", store.get_frames())
        for name in ("raw.extxyz", "stored.extxyz"):
            back = ase.io.read(tmp_path / name, index=":")
            assert [store.frame_index(content_hash(a)) for a in back] == indices
            assert [store.find_frame(a) for a in back] == indices
            assert store.add_frames(back) == indices
        assert store.n_frames == 40


def test_bad_frames_are_refused_by_field(tmp_path):
    with Store.open(tmp_path / "s") as store:
        for key, value, match in [
            ("total_charge", 0.5, "total_charge"),
            ("total_spin", 0, "total_spin"),
            ("origin", {"seed": "x", "stage": 1}, "stage"),
            ("defect", 3, "defect"),
        ]:
            atoms = make_frame(0)
            atoms.info[key] = value
            with pytest.raises(ValueError, match=match):
                store.add_frames([atoms])
        assert store.n_frames == 0


# --------------------------------------------------------------------- labels
def test_labels_ok_failures_stress_and_lookup(tmp_path):
    frames = [make_frame(i) for i in range(3)]
    stress = np.array([[1.0, 0.1, 0.2], [0.1, 2.0, 0.3], [0.2, 0.3, 3.0]]) * 1e-3
    with Store.open(tmp_path / "s") as store:
        store.add_frames(frames)
        ok0 = LabelResult("ok", SH, -5.0, np.full((len(frames[0]), 3), 0.5), stress, metadata={"wall_s": 1.5, "code": "x"})
        fail1 = LabelResult.failure("timeout", SH, "wall limit", wall_s=60.0)
        ok1 = LabelResult("ok", SH, -6.0, np.zeros((len(frames[1]), 3)))
        assert store.add_labels("xtb", [(0, ok0), (1, fail1), (1, fail1)]) == [0, 1, 2]
        assert store.add_labels("xtb", [(1, ok1), (0, ok0)]) == [3, 0]  # an ok duplicate is not written
        assert store.has_label("xtb", 0, SH) and store.has_label("xtb", 1, SH)
        assert not store.has_label("xtb", 2, SH) and not store.has_label("xtb", 0, "other") and not store.has_label("dft", 0, SH)
        assert store.failed_attempts("xtb", 1, SH) == 2 and store.failed_attempts("xtb", 0, SH) == 0
        table = store.label_table("xtb")
        assert table["frame"].tolist() == [0, 1, 1, 1]
        assert table["status"].tolist() == ["ok", "timeout", "timeout", "ok"]
        assert table.loc[0, "energy_eV"] == -5.0 and np.isnan(table.loc[1, "energy_eV"])
        assert table.loc[1, "reason"] == "wall limit" and table.loc[1, "wall_s"] == 60.0
        assert table.loc[0, "metadata"] == {"wall_s": 1.5, "code": "x", "reason": ""}
        assert np.array_equal(store.label_forces("xtb", 3), np.zeros((len(frames[1]), 3)))
        assert np.array_equal(store.label_forces("xtb", 0), np.full((len(frames[0]), 3), 0.5))
        assert np.allclose(store.label_stress("xtb", 0), [1e-3, 2e-3, 3e-3, 0.3e-3, 0.2e-3, 0.1e-3])
        assert store.label_stress("xtb", 3) is None
        with pytest.raises(ValueError, match="failure"):
            store.label_forces("xtb", 1)
        with pytest.raises(ValueError, match=r"shape \(5, 3\)"):
            store.add_labels("xtb", [(0, LabelResult("ok", SH, -1.0, np.zeros((4, 3))))])
        with pytest.raises(ValueError, match="no energy or forces"):
            store.add_labels("xtb", [(2, LabelResult("crashed", SH, forces_eV_A=np.zeros((7, 3))))])
        with pytest.raises(ValueError, match="non_finite"):
            store.add_labels("xtb", [(2, LabelResult("ok", SH, float("nan"), np.zeros((7, 3))))])
        with pytest.raises(IndexError, match="add the frame first"):
            store.add_labels("xtb", [(3, ok1)])
        assert store.n_labels("xtb") == 4
        atoms = store.labelled_atoms("xtb")
        assert [a.info["frame"] for a in atoms] == [0, 1]
        assert atoms[0].info["REF_energy"] == -5.0 and np.array_equal(atoms[0].arrays["REF_forces"], ok0.forces_eV_A)
        assert "REF_stress" in atoms[0].info and "REF_stress" not in atoms[1].info
        other = settings_hash("xtb", {"method": "GFN2-xTB"})
        store.add_labels("xtb", [(2, LabelResult("ok", other, -7.0, np.zeros((7, 3))))])
        with pytest.raises(ValueError, match="pass settings_hash"):
            store.labelled_atoms("xtb")
        assert [a.info["frame"] for a in store.labelled_atoms("xtb", other)] == [2]


def test_reopen_rebuilds_indexes_and_guards_writers(tmp_path):
    path = tmp_path / "s"
    frames = [make_frame(i) for i in range(5)]
    store = Store.open(path)
    store.add_frames(frames)
    store.add_labels("xtb", [(i, make_label(i, len(a))) for i, a in enumerate(frames)])
    store.add_labels("dft", [(4, LabelResult("ok", "pbe", -1.0, np.zeros((9, 3))))])
    store.set_bulk_energy("xtb", -123.4, 64, SH)
    with pytest.raises(RuntimeError, match="one writer"):
        Store.open(path)
    before = (store.frame_table(), store.label_table("xtb"))
    store.close()
    for mode in ("r", "a"):
        with Store.open(path, mode=mode) as again:
            assert again.n_frames == 5 and again.fidelities() == ["dft", "xtb"]
            assert again.frame_table().equals(before[0]) and again.label_table("xtb").equals(before[1])
            assert [again.frame_index(content_hash(a)) for a in again.get_frames()] == [0, 1, 2, 3, 4]
            assert again.has_label("xtb", 0, SH) and again.failed_attempts("xtb", 2, SH) == 1
            assert again.has_label("dft", 4, "pbe") and np.array_equal(again.label_forces("dft", 0), np.zeros((9, 3)))
            bulk_ref = again.bulk_energies()["xtb"]
            assert (bulk_ref.energy_eV, bulk_ref.n_atoms, bulk_ref.settings_hash) == (-123.4, 64, SH)
            assert bulk_ref.energy_per_atom_eV == pytest.approx(-123.4 / 64)
            if mode == "r":
                with pytest.raises(PermissionError, match="mode='a'"):
                    again.add_frames([make_frame(9)])
            else:
                assert again.add_frames([frames[0], make_frame(9)]) == [0, 5]
    with pytest.raises(FileNotFoundError):
        Store.open(tmp_path / "missing", mode="r")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a store")
    with pytest.raises(FileExistsError):
        Store.open(tmp_path / "other")


# --------------------------------------------------------------------- SIGKILL
@pytest.mark.parametrize("kill_at", ["frames:before_commit", "frames:mid_commit", "labels:before_commit", "labels:mid_commit"])
def test_sigkill_at_the_worst_moment_leaves_a_consistent_prefix(tmp_path, kill_at, capsys):
    path = tmp_path / "s"
    child = run_writer(path, "--batches", "2", "--kill-at", kill_at)
    out, _ = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert out.split() == ["4", "4", "8", "8"]
    committed_frames = 12 if kill_at.startswith("labels") else 8
    # the torn append is on disk: 8 committed rows of the killed table, data beyond them,
    # and after "mid_commit" an offsets array resized for 12 rows but not written
    frames_killed = kill_at.startswith("frames")
    raw = zarr.open_group(path, mode="r")
    group = raw["frames"] if frames_killed else raw["labels"]["xtb"]
    offsets, data = ("offsets", "positions") if frames_killed else ("force_offsets", "forces")
    assert group[offsets].shape == ((13,) if kill_at.endswith("mid_commit") else (9,))
    assert group[data].shape[0] > group[offsets][8] > 0
    # ... but a reader sees the committed prefix, and so does the next writer after its roll-back
    with Store.open(path, mode="r") as reader:
        assert (reader.n_frames, reader.n_labels("xtb")) == (committed_frames, 8)
        assert len(reader.get_frames()) == committed_frames and len(reader.labelled_atoms("xtb")) == 6
    assert_consistent(path, committed_frames, 8)
    with Store.open(path) as store:
        assert (store.n_frames, store.n_labels("xtb")) == (committed_frames, 8)
    # the next writer (here, in this process) carries on from the committed prefix,
    # labelling the frames that lost their labels
    writer(str(path), batches=1, kill_at=None)
    assert capsys.readouterr().out.split() == [str(committed_frames + 4)] * 2
    assert_consistent(path, committed_frames + 4, committed_frames + 4)


def test_sigkill_at_random_moments(tmp_path):
    path = tmp_path / "s"
    rng = random.Random(7)
    committed = (0, 0)
    for _ in range(2):
        child = run_writer(path, "--batches", "0")  # runs until killed
        lines = [child.stdout.readline() for _ in range(3)]
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        last = [int(x) for x in lines[-1].split()]
        assert last[0] > committed[0]
        committed = (last[0], last[1])
        assert_consistent(path, *committed)
    with Store.open(path) as store:
        start = store.n_frames
        assert store.add_frames([make_frame(start)]) == [start]


def test_a_full_disk_mid_write_leaves_the_last_committed_state(tmp_path):
    """A real file-size limit (RLIMIT_FSIZE in the writing child): the write that would
    grow a chunk past it fails with EFBIG; the store reopens at the last batch the child
    reported, with no temporary file left, and takes appends again once there is room."""
    path = tmp_path / "s"
    child = run_writer(path, "--batches", "0", "--max-file-bytes", "4096")
    out, _ = child.communicate(timeout=120)
    lines = out.splitlines()
    assert child.returncode == 3, out
    assert lines[-1].startswith(f"error {errno.EFBIG} "), out
    assert len(lines) >= 3, f"the limit hit before two whole batches: {out}"
    frames, labels = (int(x) for x in lines[-2].split())
    partial = [str(p) for p in path.rglob("*") if p.is_file() and ".partial" in p.name]
    assert not partial, f"temporary files left by the failed write: {partial}"
    oversized = [p for p in path.rglob("*") if p.is_file() and p.stat().st_size > 4096]
    assert not oversized
    with Store.open(path, mode="r") as reader:
        assert (reader.n_frames, reader.n_labels("xtb")) in {(frames, labels), (frames + 4, labels)}
    assert_consistent(path, frames, labels)
    with Store.open(path) as store:  # the failed batch's frames may have landed before its labels
        assert store.n_labels("xtb") == labels and store.n_frames in (frames, frames + 4)
        start = store.n_frames
        assert store.add_frames([make_frame(start)]) == [start]


# --------------------------------------------------------------------- extxyz
def test_export_for_mace_and_import_round_trip(tmp_path):
    frames = random_frames(6, n_atoms=12, seed=5)
    results = [LabelResult("ok", SH, -50.0 - i, np.random.default_rng(i).normal(size=(12, 3)),
                           np.arange(6) * 1e-3 if i % 2 else None) for i in range(5)]
    with Store.open(tmp_path / "a") as store:
        store.add_frames(frames)
        store.add_labels("xtb", list(enumerate(results)) + [(5, LabelResult.failure("crashed", SH, "x"))])
        assert store.export_extxyz(tmp_path / "train.extxyz", "xtb") == 5
        table = store.label_table("xtb")
    back = ase.io.read(tmp_path / "train.extxyz", index=":")
    assert len(back) == 5
    for i, atoms in enumerate(back):
        assert atoms.info["REF_energy"] == results[i].energy_eV
        assert np.allclose(atoms.arrays["REF_forces"], results[i].forces_eV_A, atol=1e-8)
        assert atoms.info["total_charge"] == frames[i].info["total_charge"]
        assert atoms.info["total_spin"] == frames[i].info["total_spin"]
        assert ("REF_stress" in atoms.info) == bool(i % 2)
        assert atoms.info["defect"] == "v_Si" and atoms.info["hash"] == content_hash(atoms)
    with Store.open(tmp_path / "b") as fresh:
        assert fresh.import_extxyz(tmp_path / "train.extxyz", "xtb", SH, metadata={"from": "a"}) == 5
        assert fresh.import_extxyz(tmp_path / "train.extxyz", "xtb", SH) == 0
        assert fresh.n_frames == 5
        imported = fresh.label_table("xtb")
        assert imported["energy_eV"].tolist() == table["energy_eV"][:5].tolist()
        assert imported.loc[0, "metadata"]["from"] == "a"
        assert np.allclose(fresh.label_forces("xtb", 3), results[3].forces_eV_A, atol=1e-8)
        assert np.allclose(fresh.label_stress("xtb", 3), results[3].stress_eV_A3)
        assert [a.info["hash"] for a in fresh.get_frames()] == [content_hash(a) for a in back]
    with Store.open(tmp_path / "a") as store:  # re-import into the source: nothing new
        assert store.import_extxyz(tmp_path / "train.extxyz", "xtb", SH) == 0 and store.n_frames == 6
    with Store.open(tmp_path / "c") as other:
        with pytest.raises(KeyError, match="energy_key"):
            other.import_extxyz(tmp_path / "train.extxyz", "xtb", SH, energy_key="DFT_energy")


# --------------------------------------------------------------------- importers
def test_parse_defect_folder():
    assert parse_defect_folder("v_Cd_-1") == ("v_Cd", -1)
    assert parse_defect_folder("v_Cd_0") == ("v_Cd", 0)
    assert parse_defect_folder("Al_Si_+1") == ("Al_Si", 1)
    assert parse_defect_folder("Cd_i_C3v_+2") == ("Cd_i_C3v", 2)
    assert parse_defect_folder("Bond_Distortion_-40.0%_from_0") is None
    assert parse_defect_folder("Unperturbed") is None


def test_import_shakenbreak_vasp_folder(tmp_path):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    with Store.open(tmp_path / "s") as store:
        summary = import_shakenbreak_vasp(FIXTURE, store, "pbe", "vasp-pbe")
        assert summary.files == 6 and summary.labels_added == 6
        assert [s[0] for s in summary.skipped] == ["v_Cd_-2/Unperturbed/vasprun.xml"]
        assert "NELECT gives -1" in summary.skipped[0][1]
        frames = store.frame_table()
        table = store.label_table("pbe").join(frames.drop(columns="frame"), on="frame")
        got = {(r.defect, int(r.charge), r.seed): r for r in table.itertuples()}
        assert set(got) == {("v_Cd", -1, "Unperturbed"), ("v_Cd", -1, "Bond_Distortion_-30.0%"),
                            ("v_Cd", -1, "Bond_Distortion_-40.0%_from_0"), ("v_Cd", 0, "Dimer"),
                            ("v_Cd", 0, "Rattled"), ("Te_Cd", 1, "Unperturbed")}
        for folder, run in expected.items():
            defect, charge = parse_defect_folder(folder.split("/")[0])
            if (defect, charge) == ("v_Cd", -2):
                continue
            row = got[(defect, charge, folder.split("/")[1])]
            last = run["steps"][-1]
            assert row.energy_eV == last["free_energy"]
            assert row.multiplicity == (2 if run["nelect"] % 2 else 1)
            assert row.step == len(run["steps"]) - 1 and row.n_atoms == len(last["forces"])
            assert np.allclose(store.label_forces("pbe", row.Index), last["forces"])
            voigt = -np.array(last["stress_kB"])[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]] * 0.1 * units.GPa
            assert np.allclose(store.label_stress("pbe", row.Index), voigt, rtol=1e-6)
            atoms = store.get_frame(row.frame)
            assert np.allclose(atoms.get_scaled_positions(wrap=False), last["frac"], atol=1e-7)
            assert row.metadata["code"] == "VASP" and row.metadata["version"] == "6.4.2"
        # every ionic step, into a fresh store; then nothing new on a second import
    with Store.open(tmp_path / "all") as store:
        summary = import_shakenbreak_vasp(FIXTURE, store, "pbe", "vasp-pbe", all_steps=True, energy_key="energy")
        n_steps = sum(len(r["steps"]) for f, r in expected.items() if not f.startswith("v_Cd_-2"))
        assert summary.labels_added == n_steps == 11
        energies = sorted(store.label_table("pbe")["energy_eV"])
        assert energies == sorted(s["energy"] for f, r in expected.items() if not f.startswith("v_Cd_-2") for s in r["steps"])
        assert import_shakenbreak_vasp(FIXTURE, store, "pbe", "vasp-pbe", all_steps=True).labels_added == 0
        assert store.n_frames == 11


def test_import_real_vasprun_gz_and_multiplicity_rule(tmp_path):
    """ASE's own vasprun.xml test file (real VASP 6.3 output, diamond), gzipped, in a
    ShakeNBreak layout; the folder's own name is the defect when nothing below is."""
    source = Path(ase.__file__).parent / "test" / "testdata" / "vasp" / "vasprun_pstress.xml"
    target = tmp_path / "C_C_0" / "Unperturbed" / "vasprun.xml.gz"
    target.parent.mkdir(parents=True)
    with source.open("rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    header = read_vasprun_header(target)
    assert (header.version, header.n_electrons, header.charge, header.multiplicity()) == ("6.3.0", 8.0, 0, 1)
    reference = ase.io.read(source, format="vasp-xml")
    with Store.open(tmp_path / "s") as store:
        summary = import_shakenbreak_vasp(tmp_path / "C_C_0", store, "pbe", "h", multiplicity=lambda d, q, n: 3)
        assert summary.labels_added == 1 and not summary.skipped
        atoms = store.labelled_atoms("pbe")[0]
        assert atoms.info["REF_energy"] == reference.calc.results["free_energy"]
        assert atoms.info["defect"] == "C_C" and atoms.info["total_charge"] == 0 and atoms.info["total_spin"] == 3
        assert np.allclose(atoms.arrays["REF_forces"], reference.calc.results["forces"])


def test_corrupted_offsets_are_reported(tmp_path):
    with Store.open(tmp_path / "s") as store:
        store.add_frames([make_frame(0), make_frame(1)])
    offsets = zarr.open_group(tmp_path / "s", mode="a")["frames"]["offsets"]
    offsets[1] = 99  # decreasing after it: no writer of ours does this
    with pytest.raises(StoreCorruptedError, match="never decrease"):
        Store.open(tmp_path / "s", mode="r")


# --------------------------------------------------------------------- damaged files
def damaged_copy(source: Path, tmp_path: Path, name: str, damage: str) -> tuple[Path, Path]:
    """A copy of the store at ``source`` with file ``name`` cut to half its length
    ("truncate") or with one byte in the middle of it flipped ("flip")."""
    path = tmp_path / damage / "s"
    shutil.copytree(source, path)
    file = path / name
    data = bytearray(file.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    return path, file


@pytest.fixture(scope="module")
def two_chunk_store(tmp_path_factory) -> Path:
    """280 frames of 60 atoms (two chunks of positions), labels at two fidelities."""
    path = tmp_path_factory.mktemp("damage") / "s"
    frames = random_frames(280, n_atoms=60, seed=3)
    with Store.open(path) as store:
        store.add_frames(frames)
        for fidelity in ("xtb", "pbe"):
            store.add_labels(fidelity, [(i, make_label(3 * i, 60)) for i in range(0, 280, 10)])
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_positions_chunk_is_named_on_open_and_the_rest_reads(two_chunk_store, tmp_path, damage):
    path, file = damaged_copy(two_chunk_store, tmp_path, "frames/positions/c/1/0", damage)
    with pytest.warns(UserWarning, match=str(file)):
        reader = Store.open(path, mode="r")
    first_chunk = [i for i in range(280) if 60 * (i + 1) <= 1 << 14]
    assert len(reader.get_frames(first_chunk)) == len(first_chunk)
    assert reader.n_labels("xtb") == reader.n_labels("pbe") == 28 and len(reader.labelled_atoms("pbe")) > 0
    with pytest.raises(StoreCorruptedError, match=str(file)):
        reader.get_frame(279)
    with pytest.raises(StoreCorruptedError, match=f"{file}.*restore it from a backup"):
        Store.open(path, mode="a")  # nothing is appended to a damaged store


@pytest.mark.parametrize(("name", "damage"), [
    ("labels/xtb/forces/c/0/0", "flip"), ("labels/xtb/status/c/0", "truncate"),
    ("labels/xtb/force_offsets/c/0", "flip"), ("labels/xtb/energy/zarr.json", "truncate"),
])
def test_a_damaged_label_file_is_named_on_open_and_only_its_table_is_left_out(two_chunk_store, tmp_path, name, damage):
    path, file = damaged_copy(two_chunk_store, tmp_path, name, damage)
    with pytest.warns(UserWarning, match=f"{file}.*fidelity 'xtb' are left out"):
        reader = Store.open(path, mode="r")
    assert reader.fidelities() == ["pbe"] and set(reader.damaged) == {"xtb"}
    assert reader.n_frames == 280 and len(reader.get_frames()) == 280
    assert len(reader.labelled_atoms("pbe")) == sum(make_label(3 * i, 60).ok for i in range(0, 280, 10))
    with pytest.raises(StoreCorruptedError, match=str(file)):
        Store.open(path, mode="a")


@pytest.mark.parametrize("name", ["zarr.json", "frames/zarr.json", "frames/hash/c/0", "frames/offsets/zarr.json"])
def test_a_damaged_frame_index_or_root_file_stops_the_open_naming_it(two_chunk_store, tmp_path, name):
    """Frames' per-frame columns index everything else: their damage is an error on open."""
    path, file = damaged_copy(two_chunk_store, tmp_path, name, "truncate")
    for mode in ("r", "a"):
        with pytest.raises(StoreCorruptedError, match=str(file)):
            Store.open(path, mode=mode)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--batches", type=int, default=0)
    parser.add_argument("--kill-at")
    parser.add_argument("--max-file-bytes", type=int, help="RLIMIT_FSIZE: a write past it fails with EFBIG")
    args = parser.parse_args()
    if args.max_file_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (args.max_file_bytes, args.max_file_bytes))
        try:
            writer(args.store, args.batches, args.kill_at)
        except OSError as error:
            print("error", error.errno, error.filename, flush=True)
            sys.exit(3)
    writer(args.store, args.batches, args.kill_at)
