"""docs/reward-integrity.md states constants and names the tests behind its guarantees: both must stay true."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "reward-integrity.md").read_text()


def section(title: str) -> str:
    return DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    return rows[2:]  # past the header and its rule


CONSTANTS = [(value.strip("`"), where.strip("`")) for _, value, where in table_rows(section("The constants"))]


def resolve(where: str) -> Any:
    """The value at a dotted path: a module attribute, or a settings field's default."""
    parts = where.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            if isinstance(target, type) and issubclass(target, BaseModel) and name in target.model_fields:
                return target.model_fields[name].default
            target = getattr(target, name)
        return target
    raise LookupError(where)


def test_the_table_lists_the_constants_that_matter():
    places = {where for _, where in CONSTANTS}
    assert {"sharpe_rl.config.EvalConfig.lookback", "sharpe_rl.config.RewardConfig.sharpe_clip"} <= places
    assert len(CONSTANTS) >= 20


@pytest.mark.parametrize(("value", "where"), CONSTANTS)
def test_each_constant_is_the_one_in_the_code(value, where):
    assert resolve(where) == ast.literal_eval(value), where


def test_each_guarantee_names_tests_that_exist():
    checked = 0
    for _, tests in table_rows(section("What is guaranteed, and the test that proves it")):
        path = None
        for reference in re.findall(r"`([^`]+)`", tests):  # `tests/x.py::name`, then `::other` in the same file
            file, _, name = reference.partition("::")
            path = ROOT / file if file else path
            assert path is not None and path.is_file(), reference
            if name:
                assert re.search(rf"def {re.escape(name.split('[')[0])}\(", path.read_text()), reference
                checked += 1
    assert checked >= 12
