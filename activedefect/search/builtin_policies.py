"""The built-in policy kinds: ``uncertainty`` (committee force spread, DP-GEN style),
``stratified`` (the multi-fidelity top-up) and ``bootstrap`` (generation 0, before any
model). Each registers itself when this module is imported, which
:mod:`activedefect.search.policies` does."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from activedefect.geometry import content_hash
from activedefect.labels import FIDELITIES
from activedefect.search.candidates import farthest_point_order
from activedefect.search.policy_framework import (
    LabelRequest,
    SelectionContext,
    register_policy,
)


def _not_labelled(ctx: SelectionContext, fidelity: str) -> np.ndarray:
    cand = ctx.candidates
    indices, hashes = ctx.labelled_keys(fidelity)
    mask = np.ones(len(cand), dtype=bool)
    if "frame" in cand:
        mask &= ~cand["frame"].isin(indices).to_numpy()
    if "hash" in cand:
        mask &= ~cand["hash"].isin(hashes).to_numpy()
    return mask


def _check_uncertainty(p: Mapping[str, Any]) -> None:
    if not 0 <= p["trust_lo"] < p["trust_hi"]:
        raise ValueError(
            f"need 0 <= trust_lo < trust_hi (eV/Å), got trust_lo={p['trust_lo']}, trust_hi={p['trust_hi']}"
        )
    if int(p["per_generation"]) < 0:
        raise ValueError(f"per_generation must be >= 0, got {p['per_generation']}")
    if int(p["cut_relax_steps"]) < 0:
        raise ValueError(f"cut_relax_steps must be >= 0, got {p['cut_relax_steps']}")
    if p["fidelity"] not in (*FIDELITIES, "head"):
        raise ValueError(f"fidelity must be one of {(*FIDELITIES, 'head')}, got {p['fidelity']!r}")


def _frame_fidelities(cand: pd.DataFrame, fidelity: str) -> np.ndarray:
    """The fidelity each candidate is labelled at: ``fidelity``, or with ``"head"`` the
    head that predicted the frame (frames without one: the final head, ``high``)."""
    if fidelity != "head":
        return np.full(len(cand), fidelity, dtype=object)
    heads = cand["head"].to_numpy(dtype=object) if "head" in cand else np.full(len(cand), "", dtype=object)
    return np.where(heads == "", "high", heads)


@register_policy("uncertainty", check=_check_uncertainty)
def uncertainty(
    ctx: SelectionContext,
    *,
    policy: str,
    trust_lo: float = 0.05,
    trust_hi: float = 0.30,
    per_generation: int = 50,
    include_cut: bool = True,
    fidelity: str = "low",
    cut_relax_steps: int = 0,
    cut_relax_fmax_eV_A: float = 0.05,
) -> list[LabelRequest]:
    """DP-GEN-style: frames whose committee max force spread lies in [trust_lo,
    trust_hi] eV/Å (plus the frames where a relaxation was cut for passing trust_hi, and
    frames above trust_hi that a relaxation followed because their forces were large:
    ``exploration.trust_relative``), not yet labelled; the largest spread first, then farthest-point sampling on the
    mean-pooled descriptors (when given) so near-duplicates are not labelled twice.
    With ``cut_relax_steps`` > 0 a cut frame gets a short oracle relaxation instead of
    one label: labels along the way the relaxation was heading, where the committee
    disagrees most, so the next generation's committee can follow it further.
    ``fidelity: head`` labels each frame at the fidelity of the head that was uncertain
    there: with ``exploration.start_head: low``, cuts on the way down at `low`, cuts near
    the minima (on the `high` head, where the sparse head decides) at `high`."""
    cand = ctx.candidates
    if cand.empty:
        return []
    spread = cand["max_force_std_eV_A"].to_numpy(dtype=float)
    cut = cand["cut"].to_numpy(dtype=bool) if "cut" in cand else np.zeros(len(cand), dtype=bool)
    # uncut frames above trust_hi were followed (large forces), so they are as sound as any
    window = (spread >= trust_lo) & ~cut
    if include_cut:
        window |= cut
    at = _frame_fidelities(cand, fidelity)
    not_labelled = np.where(at == "low", _not_labelled(ctx, "low"), _not_labelled(ctx, "high"))
    pool = np.flatnonzero(window & not_labelled)
    if not len(pool):
        return []
    n = int(per_generation)  # the budget cuts this priority list afterwards (and counts the rest)
    by_spread = pool[np.argsort(-spread[pool], kind="stable")]
    if ctx.descriptors is None:
        order = list(by_spread[:n])
    else:
        points = np.asarray(ctx.descriptors, dtype=float)[by_spread]
        order = [int(by_spread[i]) for i in farthest_point_order(points, 0, n)]
    requests = []
    relax = {"relax_steps": int(cut_relax_steps), "relax_fmax_eV_A": cut_relax_fmax_eV_A} if cut_relax_steps else {}
    for i in order:
        s = spread[i]
        if cut[i]:
            why = f"cut: spread {s:.3f} eV/Å" + (f"; {cut_relax_steps} oracle steps from it" if relax else "")
            requests.append(ctx.request(int(i), str(at[i]), policy, why, **relax))
        elif s > trust_hi:
            requests.append(ctx.request(int(i), str(at[i]), policy, f"spread {s:.3f} eV/Å > trust_hi at large forces"))
        else:
            why = f"spread {s:.3f} eV/Å in [{trust_lo}, {trust_hi}]"
            requests.append(ctx.request(int(i), str(at[i]), policy, why))
    return requests


def _check_stratified(p: Mapping[str, Any]) -> None:
    if not 0 < p["fraction"] <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {p['fraction']}")
    if int(p["energy_bins"]) < 1:
        raise ValueError(f"energy_bins must be >= 1, got {p['energy_bins']}")
    if p["fidelity"] not in FIDELITIES or p["source"] not in FIDELITIES or p["fidelity"] == p["source"]:
        raise ValueError(f"fidelity and source must be different fidelities of {FIDELITIES}")
    if int(p["ground_state_relax_steps"]) < 0:
        raise ValueError(f"ground_state_relax_steps must be >= 0, got {p['ground_state_relax_steps']}")
    if int(p["basins_per_state"]) < 1:
        raise ValueError(f"basins_per_state must be >= 1 (1: the ground-state candidate), got {p['basins_per_state']}")


def _strata_order(groups: pd.Series, n: int, rng: np.random.Generator) -> list[int]:
    """Up to ``n`` row positions spread over strata in proportion to their sizes (largest
    remainder), random within a stratum, interleaved so any prefix stays spread out."""
    sizes = groups.value_counts(sort=False)
    n = min(n, int(sizes.sum()))
    if n <= 0:
        return []
    quota = sizes / sizes.sum() * n
    alloc = np.floor(quota).astype(int)
    for key in (quota - alloc).sort_values(ascending=False, kind="stable").index[: n - int(alloc.sum())]:
        alloc[key] += 1
    picks = {
        key: list(rng.permutation(np.flatnonzero((groups == key).to_numpy()))[: alloc[key]]) for key in sizes.index
    }
    order = []
    while any(picks.values()):
        for key in sizes.index:
            if picks[key]:
                order.append(int(picks[key].pop(0)))
    return order


def _relax_where_no_ground_state(
    ctx: SelectionContext, table: pd.DataFrame, done: set[int], policy: str, fidelity: str, steps: int, fmax: float
) -> list[LabelRequest]:
    """A charge state whose committee relaxations all stopped untrusted has no candidate:
    relax its lowest-energy `source`-labelled frame with the oracle instead, so the next
    committee learns where that state's minimum lies."""
    found = {(b.defect, int(b.charge)) for b in ctx.ground_states}
    open_rows = table[~table["frame"].isin(done)]
    requests = []
    for (defect, charge), rows in sorted(open_rows.groupby(["defect", "charge"])):
        if (defect, int(charge)) in found:
            continue
        lowest = rows.loc[rows["energy_eV"].idxmin()]
        requests.append(LabelRequest(
            fidelity=fidelity, policy=policy, frame=int(lowest["frame"]), relax_steps=steps, relax_fmax_eV_A=fmax,
            reason=f"no ground-state candidate of {defect} charge {int(charge):+d}: oracle relaxation of its lowest frame",
        ))
    return requests


@register_policy("stratified", check=_check_stratified)
def stratified(
    ctx: SelectionContext,
    *,
    policy: str,
    fraction: float = 0.10,
    energy_bins: int = 4,
    include_ground_states: bool = True,
    fidelity: str = "high",
    source: str = "low",
    ground_state_relax_steps: int = 0,
    ground_state_relax_fmax_eV_A: float = 0.01,
    basins_per_state: int = 1,
) -> list[LabelRequest]:
    """Multi-fidelity top-up: every ground-state candidate not yet labelled at
    ``fidelity`` — with ``basins_per_state`` > 1 also the committee's next-lowest minima
    of each charge state, up to that many: a `high` label on a basin the `low` order
    ranks too high is what shows the model that `high` orders it otherwise —
    (with ``ground_state_relax_steps`` > 0: a short oracle relaxation from it,
    whose first step labels the candidate itself and the rest show the model the way to
    the oracle's minimum; and one from the lowest frame of each charge state that has no
    candidate), then ``source``-labelled frames not yet at ``fidelity`` until those
    reach ``fraction`` of all ``source``-labelled frames, stratified by defect, charge,
    basin and energy quantile (``energy_bins`` per defect × charge × basin), with at
    least one frame for every defect × charge state that has none at ``fidelity``."""
    requests: list[LabelRequest] = []
    done_idx, done_hash = ctx.labelled_keys(fidelity)
    if include_ground_states:
        frame_of_hash = dict(zip(ctx.frames["hash"], ctx.frames["frame"])) if "hash" in ctx.frames else {}
        # every state's ground-state candidate before any second basin: a tight budget cuts from the end
        for basin in sorted((b for b in ctx.basins if b.rank < basins_per_state), key=lambda b: b.rank):
            digest = content_hash(basin.atoms)
            frame = basin.frame if basin.frame is not None else frame_of_hash.get(digest)
            if (frame is not None and int(frame) in done_idx) or digest in done_hash:
                continue
            what = "ground-state candidate" if basin.is_ground_state else f"basin {basin.rank} minimum"
            requests.append(
                LabelRequest(
                    fidelity=fidelity,
                    policy=policy,
                    reason=f"{what} of {basin.defect} charge {basin.charge:+d}",
                    frame=None if frame is None else int(frame),
                    atoms=basin.atoms,
                    relax_steps=int(ground_state_relax_steps),
                    relax_fmax_eV_A=ground_state_relax_fmax_eV_A if ground_state_relax_steps else None,
                )
            )
    source_ok = ctx.labelled(source, ok_only=True)[["frame", "energy_eV"]].drop_duplicates("frame")
    if source_ok.empty or ctx.frames.empty:
        return requests
    table = ctx.frames.merge(source_ok, on="frame", how="inner")
    if ground_state_relax_steps:
        requests += _relax_where_no_ground_state(ctx, table, done_idx, policy, fidelity, int(ground_state_relax_steps),
                                                 ground_state_relax_fmax_eV_A)
    done = table["frame"].isin(done_idx)
    target = math.ceil(fraction * len(table)) - int(done.sum())
    ok = table["frame"].isin(set(ctx.labelled(fidelity, ok_only=True)["frame"]))
    covered = set(zip(table.loc[ok, "defect"], table.loc[ok, "charge"]))
    pool = table[~done].reset_index(drop=True)
    if pool.empty:
        return requests
    basin = pool["basin"].fillna(-1).astype(int) if "basin" in pool else pd.Series(-1, index=pool.index)
    state = pool["defect"].astype(str) + "|" + pool["charge"].astype(str)
    group = state + "|" + basin.astype(str)
    rank = pool.groupby(group)["energy_eV"].rank(method="first")
    size = group.map(group.value_counts())
    bins = np.minimum(((rank - 1) * np.minimum(energy_bins, size) // size).astype(int), energy_bins - 1)
    strata = group + "|e" + bins.astype(str)
    rng = np.random.default_rng(ctx.seed)
    chosen: list[int] = []
    for key in sorted(set(state)):  # coverage first: one frame per uncovered charge state
        d, q = key.split("|")
        if (d, int(q)) not in covered:
            members = np.flatnonzero((state == key).to_numpy())
            chosen.append(int(rng.choice(members)))
    rest = pool.drop(index=chosen)
    order = _strata_order(strata.loc[rest.index], max(0, target - len(chosen)), rng)
    chosen += [int(rest.index[i]) for i in order]
    for i in chosen:
        row = pool.loc[i]
        requests.append(
            LabelRequest(
                fidelity=fidelity,
                policy=policy,
                reason=f"stratum {strata[i]} (energy {row['energy_eV']:.3f} eV at {source})",
                frame=int(row["frame"]),
            )
        )
    return requests


def _check_bootstrap(p: Mapping[str, Any]) -> None:
    if not 0 <= p["high_fraction"] <= 1:
        raise ValueError(f"high_fraction must be in [0, 1], got {p['high_fraction']}")
    if int(p["low_relax_steps"]) < 0:
        raise ValueError(f"low_relax_steps must be >= 0, got {p['low_relax_steps']}")


@register_policy("bootstrap", phase="bootstrap", check=_check_bootstrap)
def bootstrap(
    ctx: SelectionContext,
    *,
    policy: str,
    high_fraction: float = 0.10,
    always_high: Sequence[str] = ("Unperturbed",),
    low_relax_steps: int = 0,
    low_relax_fmax_eV_A: float = 0.05,
) -> list[LabelRequest]:
    """Generation 0, before any model: every seed (candidate row) at `low` — a short
    oracle relaxation of ``low_relax_steps`` when > 0 — and ``high_fraction`` of them at
    `high`, always including seeds whose name contains one of ``always_high`` (each
    charge state's Unperturbed seed), the rest spread over defect × charge states."""
    cand = ctx.candidates
    if cand.empty:
        return []
    requests = []
    rng = np.random.default_rng(ctx.seed)
    names = cand["seed"].astype(str).reset_index(drop=True) if "seed" in cand else pd.Series([""] * len(cand))
    must = names.apply(lambda s: any(p in s for p in always_high)).to_numpy()
    state = (cand["defect"].astype(str) + "|" + cand["charge"].astype(str)).reset_index(drop=True)
    # low: every seed; the always-high ones first, then spread over charge states, so a
    # budget too small for all seeds still covers every state
    not_low = _not_labelled(ctx, "low")
    rest_low = np.flatnonzero(~must & not_low)
    low_order = [int(i) for i in np.flatnonzero(must & not_low)]
    spread_low = _strata_order(state.iloc[rest_low].reset_index(drop=True), len(rest_low), rng)
    low_order += [int(rest_low[j]) for j in spread_low]
    relax = {"relax_steps": int(low_relax_steps), "relax_fmax_eV_A": low_relax_fmax_eV_A if low_relax_steps else None}
    for i in low_order:
        requests.append(ctx.request(i, "low", policy, f"seed {names.iloc[i]}", **relax))
    not_high = _not_labelled(ctx, "high")
    first = [int(i) for i in np.flatnonzero(must & not_high)]
    target = math.ceil(high_fraction * len(cand)) - int((~not_high).sum())
    rest = np.flatnonzero(~must & not_high)
    order = _strata_order(state.iloc[rest].reset_index(drop=True), max(0, target - len(first)), rng)
    for i in first:
        requests.append(ctx.request(i, "high", policy, f"seed {names.iloc[i]} (always at high)"))
    for j in order:
        reason = f"seed {names.iloc[rest[j]]} (stratified by charge state)"
        requests.append(ctx.request(int(rest[j]), "high", policy, reason))
    return requests
