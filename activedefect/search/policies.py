"""Selection policies: which frames get a `low` or a `high` label next.

A policy kind is a function registered with :func:`register_policy`; it takes a
:class:`SelectionContext` (plain data: candidate table, label tables, budget, ground-state
candidates) and its parameters as keyword arguments, and returns :class:`LabelRequest`
objects in priority order. :meth:`Policy.select` cuts that list to the remaining budget
per fidelity and says when a budget is spent (:class:`SelectionResult`). Presets
(``policies/*.yaml`` at the top of the repository) name a kind and its parameters; campaign specs
list policies by preset name, by path to a YAML file, or inline as a mapping.
See docs/policies.md.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from ase import Atoms

from activedefect.geometry import content_hash
from activedefect.labels import FIDELITIES
from activedefect.search.basins import Basin, basin_of_results
from activedefect.search.explore import RelaxResult

#: Phases a policy runs in: ``bootstrap`` before any model exists (generation 0),
#: ``select`` after each exploration.
PHASES = ("bootstrap", "select")
#: Candidate table columns; ``defect`` and ``charge`` are required, the rest as a kind needs.
CANDIDATE_COLUMNS = (
    "frame",  # store index, -1 when the frame is not stored (then ctx.atoms holds it)
    "hash",  # geometry.content_hash, to recognise frames labelled under another index
    "defect",
    "charge",
    "seed",
    "step",
    "energy_eV",
    "energy_std_eV",
    "max_force_std_eV_A",
    "cut",  # True: the frame where a relaxation left the trusted region
    "basin",  # rank of the basin its trajectory relaxed into, -1 for none
)


@dataclass
class LabelRequest:
    """Label one structure at one fidelity: a stored frame (``frame``) or a new structure
    (``atoms``). ``relax_steps > 0`` asks for a short oracle relaxation instead of a
    single point (the campaign runs it and stores its frames)."""

    fidelity: str
    policy: str
    reason: str
    frame: int | None = None
    atoms: Atoms | None = None
    relax_steps: int = 0
    relax_fmax_eV_A: float | None = None

    def __post_init__(self) -> None:
        if self.fidelity not in FIDELITIES:
            raise ValueError(f"LabelRequest.fidelity must be one of {FIDELITIES}, got {self.fidelity!r}")
        if self.frame is None and self.atoms is None:
            raise ValueError("a LabelRequest needs a store frame index or the atoms to label")

    @property
    def max_calls(self) -> int:
        """Oracle calls it may make: a relaxation of n steps evaluates its start and
        each of the n steps (fewer when it converges or replays known labels)."""
        return self.relax_steps + 1 if self.relax_steps else 1

    def key(self) -> tuple[str, str]:
        """Identity for de-duplication: fidelity and frame index (or content hash)."""
        return self.fidelity, (f"frame:{self.frame}" if self.frame is not None else content_hash(self.atoms))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without the atoms (a stored frame is referred to by index)."""
        return {
            "fidelity": self.fidelity,
            "policy": self.policy,
            "reason": self.reason,
            "frame": self.frame,
            "hash": content_hash(self.atoms) if self.atoms is not None else None,
            "relax_steps": self.relax_steps,
            "relax_fmax_eV_A": self.relax_fmax_eV_A,
        }


@dataclass
class SelectionResult:
    """Requests within budget; ``budget_exhausted[f]`` is true when fidelity ``f`` has no
    budget left after them; ``dropped[f]`` counts requests cut for lack of budget."""

    requests: list[LabelRequest] = field(default_factory=list)
    budget_exhausted: dict[str, bool] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def calls(self, fidelity: str) -> int:
        """The most oracle calls of ``fidelity`` these requests may make."""
        return sum(r.max_calls for r in self.requests if r.fidelity == fidelity)

    @property
    def any_exhausted(self) -> bool:
        return any(self.budget_exhausted.values())


@dataclass
class SelectionContext:
    """Everything a policy may look at, as plain data.

    - ``candidates``: one row per candidate frame (columns :data:`CANDIDATE_COLUMNS`);
      ``atoms`` (row-aligned) holds the structures not in the store; ``descriptors``
      (row-aligned, ``(n, D)``) their mean-pooled committee descriptors.
    - ``frames``: the store's frame table (``frame``, ``hash``, ``defect``, ``charge``,
      ... and optionally ``basin``); ``labels``: label table per fidelity (``frame``,
      ``energy_eV``, ``status``, ``settings_hash``). With ``settings_hashes``, only
      labels under the current settings count.
    - ``budget_left``: labels still allowed per fidelity.
    - ``ground_states``: each defect × charge state's ground-state candidate.
    """

    budget_left: Mapping[str, int]
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)
    atoms: Sequence[Atoms] | None = None
    descriptors: np.ndarray | None = None
    frames: pd.DataFrame = field(default_factory=pd.DataFrame)
    labels: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    settings_hashes: Mapping[str, str] = field(default_factory=dict)
    ground_states: Sequence[Basin] = ()
    seed: int = 0

    def labelled(self, fidelity: str, ok_only: bool = False) -> pd.DataFrame:
        """Label rows of ``fidelity`` that count (current settings; ``ok`` ones only if asked)."""
        table = self.labels.get(fidelity)
        if table is None or table.empty:
            return pd.DataFrame({"frame": pd.Series(dtype=int), "energy_eV": pd.Series(dtype=float)})
        if fidelity in self.settings_hashes:
            table = table[table["settings_hash"] == self.settings_hashes[fidelity]]
        if ok_only:
            table = table[table["status"] == "ok"]
        return table

    def labelled_keys(self, fidelity: str) -> tuple[set[int], set[str]]:
        """Frame indices and content hashes already labelled (or tried) at ``fidelity``."""
        indices = {int(i) for i in self.labelled(fidelity)["frame"]}
        hashes: set[str] = set()
        if indices and "hash" in self.frames:
            rows = self.frames[self.frames["frame"].isin(indices)]
            hashes = set(rows["hash"])
        return indices, hashes

    def request(self, row_index: int, fidelity: str, policy: str, reason: str, **extra: Any) -> LabelRequest:
        """A request for candidate row ``row_index``."""
        row = self.candidates.iloc[row_index]
        value = row.get("frame")
        frame = int(value) if value is not None and pd.notna(value) and int(value) >= 0 else None
        atoms = self.atoms[row_index] if self.atoms is not None else None
        if frame is None and atoms is None:
            raise ValueError(
                f"candidate row {row_index} has no store frame (frame = -1) and the context has no atoms; "
                "give SelectionContext.atoms or store the frame first"
            )
        return LabelRequest(fidelity=fidelity, policy=policy, reason=reason, frame=frame, atoms=atoms, **extra)


# ----------------------------------------------------------------------------- registry

PolicyFunction = Callable[..., list[LabelRequest]]


@dataclass(frozen=True)
class _Kind:
    function: PolicyFunction
    phase: str
    defaults: Mapping[str, Any]
    check: Callable[[Mapping[str, Any]], None] | None


_KINDS: dict[str, _Kind] = {}


def register_policy(
    kind: str, *, phase: str = "select", check: Callable[[Mapping[str, Any]], None] | None = None
) -> Callable[[PolicyFunction], PolicyFunction]:
    """Register ``fn(ctx, *, policy, **params) -> list[LabelRequest]`` as policy ``kind``.

    Its keyword parameters (with defaults) are the parameters presets may set;
    ``policy`` receives the policy's name for the requests' provenance. ``check``
    validates parameters when a policy is loaded, before any work starts.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")

    def decorate(fn: PolicyFunction) -> PolicyFunction:
        params = inspect.signature(fn).parameters
        defaults = {
            name: p.default
            for name, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "policy"
        }
        missing = [name for name, value in defaults.items() if value is inspect.Parameter.empty]
        if missing:
            raise TypeError(f"policy {kind!r}: keyword parameters {missing} need defaults")
        _KINDS[kind] = _Kind(fn, phase, defaults, check)
        return fn

    return decorate


def policy_kinds() -> dict[str, dict[str, Any]]:
    """Registered kinds and their default parameters."""
    return {kind: dict(k.defaults) for kind, k in sorted(_KINDS.items())}


@dataclass(frozen=True)
class Policy:
    """A kind with its parameters (defaults filled in), under a name."""

    name: str
    kind: str
    params: Mapping[str, Any]
    description: str = ""

    @property
    def phase(self) -> str:
        return _KINDS[self.kind].phase

    def select(self, ctx: SelectionContext) -> SelectionResult:
        """Run the policy and keep its requests within ``ctx.budget_left``."""
        return select([self], ctx, self.phase)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.params}


def _unique(requests: Iterable[LabelRequest], seen: set | None = None) -> list[LabelRequest]:
    seen = set() if seen is None else seen
    out = []
    for r in requests:
        if r.key() not in seen:
            seen.add(r.key())
            out.append(r)
    return out


def _within_budget(requests: list[LabelRequest], budget_left: Mapping[str, int]) -> SelectionResult:
    left = {f: int(budget_left.get(f, 0)) for f in FIDELITIES}
    kept, dropped = [], dict.fromkeys(FIDELITIES, 0)
    for r in requests:
        if left[r.fidelity] >= r.max_calls:
            kept.append(r)
            left[r.fidelity] -= r.max_calls
        else:
            dropped[r.fidelity] += 1
    return SelectionResult(kept, {f: left[f] <= 0 for f in FIDELITIES}, dropped)


def select(policies: Sequence[Policy], ctx: SelectionContext, phase: str) -> SelectionResult:
    """Run the ``phase`` policies in order; each sees the budget the ones before it left,
    and a frame requested twice at one fidelity is labelled once."""
    budget = {f: int(ctx.budget_left.get(f, 0)) for f in FIDELITIES}
    total = SelectionResult([], {f: budget[f] <= 0 for f in FIDELITIES}, dict.fromkeys(FIDELITIES, 0))
    seen: set = set()
    for policy in policies:
        if policy.phase != phase:
            continue
        raw = _KINDS[policy.kind].function(replace(ctx, budget_left=dict(budget)), policy=policy.name, **policy.params)
        result = _within_budget(_unique(raw, seen), budget)
        total.requests.extend(result.requests)
        for f in FIDELITIES:
            budget[f] -= result.calls(f)
            total.dropped[f] += result.dropped[f]
            total.budget_exhausted[f] = budget[f] <= 0
    return total


# ----------------------------------------------------------------------------- loading

#: The top-level ``policies/`` folder, installed as this package.
PRESET_PACKAGE = "activedefect.policy_presets"


def preset_names() -> list[str]:
    root = resources.files(PRESET_PACKAGE)
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"policy file {source} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"policy file {source} must be a mapping with `kind:` and parameters")
    return data


def load_policy(ref: str | Path | Mapping[str, Any], base_dir: str | Path | None = None) -> Policy:
    """A policy from a preset name (``committee-uncertainty``), a YAML file path
    (relative to ``base_dir``), or an inline mapping ``{kind: ..., <param>: ...}``.

    Parameters not given take the kind's defaults; unknown kinds or parameters raise a
    ``ValueError`` naming them and what is allowed.
    """
    if isinstance(ref, Mapping):
        data, source, default_name = dict(ref), "inline policy", None
    else:
        text = str(ref)
        if isinstance(ref, Path) or text.endswith((".yaml", ".yml")) or "/" in text:
            path = Path(text)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise ValueError(f"policy file {path} does not exist")
            data, source, default_name = _read_yaml(path.read_text(), str(path)), str(path), path.stem
        else:
            preset = resources.files(PRESET_PACKAGE).joinpath(f"{text}.yaml")
            if not preset.is_file():
                raise ValueError(
                    f"unknown policy preset {text!r}; presets: {preset_names()} "
                    "(or give a path to a YAML file, or an inline mapping with `kind:`)"
                )
            data, source, default_name = _read_yaml(preset.read_text(), f"preset {text}"), f"preset {text}", text
    kind = data.pop("kind", None)
    if kind not in _KINDS:
        kinds = "; ".join(f"{name} ({', '.join(f'{k}={v!r}' for k, v in params.items())})"
                          for name, params in policy_kinds().items())
        raise ValueError(f"{source}: `kind` must be one of the registered kinds, got {kind!r}; "
                         f"kinds (parameters with defaults): {kinds}")
    name = str(data.pop("name", default_name or kind))
    description = str(data.pop("description", ""))
    spec = _KINDS[kind]
    unknown = sorted(set(data) - set(spec.defaults))
    if unknown:
        raise ValueError(
            f"{source}: unknown parameter(s) {unknown} for kind {kind!r}; allowed: {sorted(spec.defaults)}"
        )
    params = {**spec.defaults, **data}
    if spec.check is not None:
        try:
            spec.check(params)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    return Policy(name=name, kind=kind, params=params, description=description)


# ----------------------------------------------------------------------------- candidates


def candidate_table(
    results: Sequence[RelaxResult], basins: Mapping[tuple[str, int], list[Basin]] | None = None
) -> tuple[pd.DataFrame, list[Atoms]]:
    """Candidate rows (and their atoms) from every kept frame of ``results``; ``basin`` is
    the rank of the basin the frame's trajectory relaxed into (-1 for none)."""
    ranks = basin_of_results(basins, len(results)) if basins is not None else [None] * len(results)
    rows, atoms = [], []
    for result, rank in zip(results, ranks):
        for f in result.frames:
            rows.append(
                {
                    "frame": -1,
                    "hash": content_hash(f.atoms),
                    "defect": result.defect,
                    "charge": result.charge,
                    "seed": result.seed,
                    "step": f.step,
                    "energy_eV": f.energy_eV,
                    "energy_std_eV": f.energy_std_eV,
                    "max_force_std_eV_A": f.max_force_std_eV_A,
                    "cut": f.cut,
                    "basin": -1 if rank is None else rank,
                }
            )
            atoms.append(f.atoms)
    return pd.DataFrame(rows, columns=list(CANDIDATE_COLUMNS)), atoms


def mean_pooled(descriptors: Sequence[np.ndarray]) -> np.ndarray:
    """One vector per structure: the mean of its per-atom descriptors ``(N, D)``."""
    return np.stack([np.asarray(d, dtype=np.float64).mean(axis=0) for d in descriptors])


def farthest_point_order(points: np.ndarray, first: int, n: int) -> list[int]:
    """Up to ``n`` indices: ``first``, then repeatedly the point farthest (Euclidean) from
    those chosen; ties go to the lower index."""
    n = min(n, len(points))
    if n <= 0:
        return []
    chosen = [first]
    dist = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < n:
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0.0:  # only duplicates of chosen points remain
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


def _not_labelled(ctx: SelectionContext, fidelity: str) -> np.ndarray:
    cand = ctx.candidates
    indices, hashes = ctx.labelled_keys(fidelity)
    mask = np.ones(len(cand), dtype=bool)
    if "frame" in cand:
        mask &= ~cand["frame"].isin(indices).to_numpy()
    if "hash" in cand:
        mask &= ~cand["hash"].isin(hashes).to_numpy()
    return mask


# ----------------------------------------------------------------------------- kinds


def _check_uncertainty(p: Mapping[str, Any]) -> None:
    if not 0 <= p["trust_lo"] < p["trust_hi"]:
        raise ValueError(
            f"need 0 <= trust_lo < trust_hi (eV/Å), got trust_lo={p['trust_lo']}, trust_hi={p['trust_hi']}"
        )
    if int(p["per_generation"]) < 0:
        raise ValueError(f"per_generation must be >= 0, got {p['per_generation']}")
    if int(p["cut_relax_steps"]) < 0:
        raise ValueError(f"cut_relax_steps must be >= 0, got {p['cut_relax_steps']}")
    if p["fidelity"] not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {FIDELITIES}, got {p['fidelity']!r}")


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
    disagrees most, so the next generation's committee can follow it further."""
    cand = ctx.candidates
    if cand.empty:
        return []
    spread = cand["max_force_std_eV_A"].to_numpy(dtype=float)
    cut = cand["cut"].to_numpy(dtype=bool) if "cut" in cand else np.zeros(len(cand), dtype=bool)
    # uncut frames above trust_hi were followed (large forces), so they are as sound as any
    window = (spread >= trust_lo) & ~cut
    if include_cut:
        window |= cut
    pool = np.flatnonzero(window & _not_labelled(ctx, fidelity))
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
            requests.append(ctx.request(int(i), fidelity, policy, why, **relax))
        elif s > trust_hi:
            requests.append(ctx.request(int(i), fidelity, policy, f"spread {s:.3f} eV/Å > trust_hi at large forces"))
        else:
            why = f"spread {s:.3f} eV/Å in [{trust_lo}, {trust_hi}]"
            requests.append(ctx.request(int(i), fidelity, policy, why))
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
) -> list[LabelRequest]:
    """Multi-fidelity top-up: every ground-state candidate not yet labelled at
    ``fidelity`` (with ``ground_state_relax_steps`` > 0: a short oracle relaxation from it,
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
        for basin in ctx.ground_states:
            digest = content_hash(basin.atoms)
            frame = basin.frame if basin.frame is not None else frame_of_hash.get(digest)
            if (frame is not None and int(frame) in done_idx) or digest in done_hash:
                continue
            requests.append(
                LabelRequest(
                    fidelity=fidelity,
                    policy=policy,
                    reason=f"ground-state candidate of {basin.defect} charge {basin.charge:+d}",
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
