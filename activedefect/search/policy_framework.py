"""Selection policies: which frames get a `low` or a `high` label next.

A policy kind is a function registered with :func:`register_policy`; it takes a
:class:`SelectionContext` (plain data: candidate table, label tables, budget, ground-state
candidates) and its parameters as keyword arguments, and returns :class:`LabelRequest`
objects in priority order. :meth:`Policy.select` cuts that list to the remaining budget
per fidelity and says when a budget is spent (:class:`SelectionResult`). The built-in
kinds are in :mod:`activedefect.search.builtin_policies`; presets and loading by name in
:mod:`activedefect.search.policies`. See docs/policies.md.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from ase import Atoms

from activedefect.geometry import content_hash
from activedefect.labels import FIDELITIES
from activedefect.search.basins import Basin

#: Phases a policy runs in: ``bootstrap`` before any model exists (generation 0),
#: ``select`` after each exploration.
PHASES = ("bootstrap", "select")


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


@dataclass
class SelectionContext:
    """Everything a policy may look at, as plain data.

    - ``candidates``: one row per candidate frame (columns :data:`~activedefect.search.candidates.CANDIDATE_COLUMNS`);
      ``atoms`` (row-aligned) holds the structures not in the store; ``descriptors``
      (row-aligned, ``(n, D)``) their mean-pooled committee descriptors.
    - ``frames``: the store's frame table (``frame``, ``hash``, ``defect``, ``charge``,
      ... and optionally ``basin``); ``labels``: label table per fidelity (``frame``,
      ``energy_eV``, ``status``, ``settings_hash``). With ``settings_hashes``, only
      labels under the current settings count.
    - ``budget_left``: labels still allowed per fidelity.
    - ``basins``: the committee's minima of each defect × charge state (``rank`` 0, the
      lowest, is its ground-state candidate: :attr:`ground_states`).
    """

    budget_left: Mapping[str, int]
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)
    atoms: Sequence[Atoms] | None = None
    descriptors: np.ndarray | None = None
    frames: pd.DataFrame = field(default_factory=pd.DataFrame)
    labels: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    settings_hashes: Mapping[str, str] = field(default_factory=dict)
    basins: Sequence[Basin] = ()
    seed: int = 0

    @property
    def ground_states(self) -> list[Basin]:
        """Each defect × charge state's ground-state candidate (its lowest basin)."""
        return [b for b in self.basins if b.is_ground_state]

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
class PolicyKind:
    """A registered policy kind: what :func:`register_policy` recorded."""

    function: PolicyFunction
    phase: str
    defaults: Mapping[str, Any]
    check: Callable[[Mapping[str, Any]], None] | None


_KINDS: dict[str, PolicyKind] = {}


def registered_kind(kind: str) -> PolicyKind | None:
    """The registered policy ``kind`` (its function, phase, parameter defaults, check)."""
    return _KINDS.get(kind)


def policy_kinds() -> dict[str, dict[str, Any]]:
    """Registered kinds and their default parameters."""
    return {kind: dict(k.defaults) for kind, k in sorted(_KINDS.items())}


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
        _KINDS[kind] = PolicyKind(fn, phase, defaults, check)
        return fn

    return decorate


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
