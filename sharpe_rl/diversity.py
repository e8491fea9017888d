"""Diversity-aware reward terms: a bonus for experiments in rarely visited cells, a penalty for copies.

An RL policy that finds one rewarded program tends to write it again and again: the original
system's run ended with 96% LightGBM and 99.9% template features. Two plain terms, added to the
shaped reward of experiments that ran and were scored (`RewardConfig.novelty_weight`,
`RewardConfig.copy_penalty`; both 0, so off, by default):

- **Novelty** (count-based exploration): an experiment occupies one cell of the (model family ×
  feature building block) grid per block its features use (`Classification.cells`). A cell's
  visits are the run's scored experiments in it, the earlier cycles' and this batch's (the
  experiment itself included), so the count does not depend on the order of the batch. The
  bonus is 1 / √(visits to the experiment's least visited cell): 1 for a first visit, 0.1 for a
  cell visited 100 times. The least visited cell decides, so adding an untried kind of feature
  to a crowded model family is exploration too; it pays only while that cell stays rare.
- **Copies**: an experiment whose code, normalised, already ran earlier in the run (or earlier in
  this batch) is a copy. Its Sharpe is the one already rewarded, so re-submitting a lucky
  program would reinforce the luck. Normalising (`normalised_code_hash`) drops what does not
  change the program: comments, docstrings, layout, the spec's `name`, and the names of
  variables, arguments and helpers, so a renamed or reformatted copy is still a copy.

A copy earns `max(reward - copy_penalty, -1)` and no novelty bonus; any other scored experiment
earns `reward + novelty_weight × novelty`. Failures keep their rung of the penalty ladder, and
the floor of -1 keeps every valid model, copy or not, above every failure.

Like TRL's reward functions these are plain functions with no I/O: the batch and the run's
history (`Visits`, built from the replay buffer's frame) in, one float per experiment out.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import polars as pl

from sharpe_rl.classify import classify_spec_json
from sharpe_rl.config import RewardConfig
from sharpe_rl.experience import Experience
from sharpe_rl.grid import Cell

#: The functions the harness calls by name: renaming them would change what runs.
INTERFACE_NAMES = frozenset({"make_features", "make_model"})


@dataclass
class Visits:
    """What a run has tried so far: scored experiments per grid cell, normalised code of what ran."""

    cells: Counter[Cell] = field(default_factory=Counter)
    programs: set[str] = field(default_factory=set)

    def add(self, spec_json: str | None, error_class: str | None, executed: bool) -> None:
        """Count one experiment: its cells if it was scored (no error), its code if it was executed."""
        if spec_json is None:
            return
        if error_class is None:
            self.cells.update(classify_spec_json(spec_json).cells)
        if executed:
            self.programs.add(normalised_code_hash(spec_json))

    @classmethod
    def from_experiences(cls, experiences: Iterable[Experience]) -> Visits:
        visits = cls()
        for e in experiences:
            visits.add(e.spec_json, e.error_class, e.cache_key is not None)
        return visits

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> Visits:
        """From `ReplayBuffer.frame(run)` (the run's earlier cycles): `spec_json`, `error_class`, `cache_key`."""
        visits = cls()
        for spec_json, error_class, cache_key in frame.select("spec_json", "error_class", "cache_key").iter_rows():
            visits.add(spec_json, error_class, cache_key is not None)
        return visits


def novelty(batch: Sequence[Experience], history: Visits) -> list[float]:
    """1 / √(visits to its least visited cell) for each scored experiment with cells; 0 for the others.

    Visits count the run's earlier scored experiments (`history`) and this batch's, itself included.
    """
    counts = history.cells + Visits.from_experiences(batch).cells
    bonuses = []
    for e in batch:
        cells = classify_spec_json(e.spec_json).cells if e.error_class is None and e.spec_json else ()
        bonuses.append(1 / math.sqrt(min(counts[c] for c in cells)) if cells else 0.0)
    return bonuses


def copies(batch: Sequence[Experience], history: Visits) -> list[bool]:
    """True for each executed experiment whose normalised code ran earlier: in `history`, or at a lower batch index."""
    seen = set(history.programs)
    is_copy: dict[int, bool] = {}
    for e in sorted(batch, key=lambda e: e.index):
        if e.spec_json is None or e.cache_key is None:  # never executed
            is_copy[e.index] = False
            continue
        program = normalised_code_hash(e.spec_json)
        is_copy[e.index] = program in seen
        seen.add(program)
    return [is_copy[e.index] for e in batch]


def diversity_rewards(batch: Sequence[Experience], history: Visits, cfg: RewardConfig) -> list[float]:
    """Each experience's `reward` with the novelty bonus added, or the copy penalty taken off (module docstring)."""
    rewards = []
    for e, bonus, is_copy in zip(batch, novelty(batch, history), copies(batch, history), strict=True):
        if e.error_class is not None:
            rewards.append(e.reward)
        elif is_copy:
            rewards.append(max(e.reward - cfg.copy_penalty, -1.0))
        else:
            rewards.append(e.reward + cfg.novelty_weight * bonus)
    return rewards


# ---------------------------------------------------------------------------------------------
# Normalised code


@lru_cache(maxsize=4096)
def normalised_code_hash(spec_json: str) -> str:
    """Hash of an experiment's features and model source after `normalise_source` (the name is left out)."""
    spec = json.loads(spec_json)
    payload = json.dumps([normalise_source(spec["features"]), normalise_source(spec["model"])])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def normalise_source(source: str) -> str:
    """The source re-printed from its syntax tree, without docstrings, its own names numbered in order.

    Comments and layout do not survive parsing; string or `...` statements (docstrings) do nothing
    and are dropped; every name the code binds (variables, arguments, helper functions and
    classes, import aliases) becomes `_<n>_` by order of appearance, except `make_features`,
    `make_model` and the methods and attributes of classes, which are reached by name from
    outside (`model.fit`). Keywords that pass a helper's own parameter are renamed with it.
    Only for comparing programs: the result need not run. Unparseable source is compared with
    its whitespace collapsed.
    """
    try:
        tree = ast.parse(source)
        _drop_constant_statements(tree)
        renames, parameters = _canonical_names(tree)
        for node in ast.walk(tree):
            _rename(node, renames, parameters)
        return ast.unparse(tree)
    except (SyntaxError, ValueError, RecursionError):  # ValueError: null bytes
        return " ".join(source.split())


def _drop_constant_statements(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            statements = getattr(node, name, None)
            if isinstance(statements, list) and statements:
                kept = [s for s in statements if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
                setattr(node, name, kept or [ast.Pass()])


def _canonical_names(tree: ast.Module) -> tuple[dict[str, str], set[str]]:
    """Old name -> `_<n>_` for every name the code binds, numbered in `ast.walk` order; the parameter names."""
    bound: set[str] = set()
    parameters: set[str] = set()
    kept = set(INTERFACE_NAMES)
    for node in ast.walk(tree):
        match node:
            case ast.Name(ctx=ast.Store() | ast.Del()):
                bound.add(node.id)
            case ast.arg():
                bound.add(node.arg)
                parameters.add(node.arg)
            case ast.FunctionDef() | ast.AsyncFunctionDef() | ast.ClassDef():
                bound.add(node.name)
            case ast.alias(asname=str()):
                bound.add(node.asname)
            case ast.ExceptHandler(name=str()):
                bound.add(node.name)
        if isinstance(node, ast.ClassDef):  # methods and class attributes: reached as attributes
            for statement in node.body:
                if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    kept.add(statement.name)
                targets = statement.targets if isinstance(statement, ast.Assign) else []
                if isinstance(statement, ast.AnnAssign):
                    targets = [statement.target]
                kept.update(t.id for t in targets if isinstance(t, ast.Name))
    renamed = bound - kept
    order: dict[str, str] = {}
    for node in ast.walk(tree):
        for name in _identifiers(node, parameters):
            if name in renamed and name not in order:
                order[name] = f"_{len(order)}_"
    return order, parameters


def _identifiers(node: ast.AST, parameters: set[str]) -> list[str]:
    match node:
        case ast.Name():
            return [node.id]
        case ast.arg():
            return [node.arg]
        case ast.FunctionDef() | ast.AsyncFunctionDef() | ast.ClassDef():
            return [node.name]
        case ast.alias(asname=str()):
            return [node.asname]
        case ast.ExceptHandler(name=str()):
            return [node.name]
        case ast.Global() | ast.Nonlocal():
            return list(node.names)
        case ast.keyword(arg=str()) if node.arg in parameters:
            return [node.arg]
    return []


def _rename(node: ast.AST, renames: dict[str, str], parameters: set[str]) -> None:
    match node:
        case ast.Name():
            node.id = renames.get(node.id, node.id)
        case ast.arg():
            node.arg = renames.get(node.arg, node.arg)
        case ast.FunctionDef() | ast.AsyncFunctionDef() | ast.ClassDef():
            node.name = renames.get(node.name, node.name)
        case ast.alias(asname=str()):
            node.asname = renames.get(node.asname, node.asname)
        case ast.ExceptHandler(name=str()):
            node.name = renames.get(node.name, node.name)
        case ast.Global() | ast.Nonlocal():
            node.names = [renames.get(name, name) for name in node.names]
        case ast.keyword(arg=str()) if node.arg in parameters:
            node.arg = renames.get(node.arg, node.arg)
