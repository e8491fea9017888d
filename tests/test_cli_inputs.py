"""Every command checks its inputs before it starts anything (Prefect, a container, a build) and answers a bad
one in one line that says what is wrong and what to do: a missing file, an unreadable file, an option out of range.

Each case runs the command in a folder of its own and checks: a non-zero exit, exactly one line on stderr
(`error: ...`, naming the input), nothing on stdout, and nothing started (no Prefect home made, no runs folder,
no policy written). "Unreadable" is a file of random bytes where a panel, a spec or a folder is expected: the
tests run as root, for whom file permissions do not stop a read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app

#: Random bytes: not UTF-8 text, not a Parquet file, not a folder.
NOISE = bytes.fromhex("9a2cff00e1c7") * 50

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder with a file of noise (`noise.bin`) and a runs folder holding no run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")})
    (tmp_path / "noise.bin").write_bytes(NOISE)
    (tmp_path / "empty-runs").mkdir()
    return tmp_path


# (command line, what the error line must name)
CASES = {
    # sharpe-rl run
    "run/missing data": (["run", "--data", "nope.parquet"], "nope.parquet: no such file"),
    "run/unreadable data": (["run", "--data", "noise.bin"], "noise.bin"),
    "run/cycles out of range": (["run", "--cycles", "0"], "'--cycles'"),
    "run/seed out of range": (["run", "--seed", "-1"], "'--seed'"),
    "run/unknown prompt": (["run", "--prompt", "v9"], "--prompt v9: no such prompt version"),
    "run/bad name": (["run", "--name", "my night"], "--name 'my night': a run name is"),
    # sharpe-rl exec
    "exec/missing spec": (["exec", "nope.json"], "'nope.json' does not exist"),
    "exec/unreadable spec": (["exec", "noise.bin"], "noise.bin is not UTF-8 text"),
    "exec/unknown executor": (["exec", "noise.bin", "--executor", "vm"], "'--executor'"),
    # sharpe-rl data
    "data info/missing file": (["data", "info", "nope.parquet"], "nope.parquet: no such file"),
    "data info/unreadable file": (["data", "info", "noise.bin"], "noise.bin"),
    "data fetch/missing file": (["data", "fetch", "--source", "file", "--path", "nope.csv"], "nope.csv: no such file"),
    "data fetch/unreadable file": (["data", "fetch", "--source", "file", "--path", "noise.bin"], "noise.bin"),
    "data fetch/unknown interval": (
        ["data", "fetch", "--source", "binance", "--symbols", "BTCUSDT", "--start", "2024-01-01", "--interval", "7x"],
        "unknown Binance interval '7x'",
    ),
    # sharpe-rl report
    "report/missing runs folder": (["report", "--runs-dir", "nope"], "--runs-dir nope: no such folder"),
    "report/unreadable runs folder": (["report", "--runs-dir", "noise.bin"], "--runs-dir noise.bin: not a folder"),
    "report/top out of range": (["report", "--top", "0"], "'--top'"),
    # sharpe-rl rerun
    "rerun/missing run": (["rerun", "nope", "0", "--runs-dir", "empty-runs"], "has no run 'nope'"),
    "rerun/unreadable runs folder": (["rerun", "r", "0", "--runs-dir", "noise.bin"], "noise.bin: not a folder"),
    "rerun/index out of range": (["rerun", "r", "0", "--index", "-1"], "'--index'"),
    # sharpe-rl evaluate-policy
    "evaluate-policy/missing run": (["evaluate-policy", "nope", "--runs-dir", "empty-runs"], "no run 'nope'"),
    "evaluate-policy/unreadable runs folder": (
        ["evaluate-policy", "r", "--runs-dir", "noise.bin"],
        "noise.bin: not a folder",
    ),
    "evaluate-policy/n out of range": (["evaluate-policy", "nope", "--n", "10"], "'--n'"),
    # sharpe-rl sample
    "sample/missing data": (["sample", "--data", "nope.parquet"], "nope.parquet: no such file"),
    "sample/unreadable data": (["sample", "--data", "noise.bin"], "noise.bin"),
    "sample/n out of range": (["sample", "--n", "0"], "'--n'"),
    # sharpe-rl build-policy (its input is a folder to write)
    "build-policy/unwritable out": (["build-policy", "--out", "noise.bin/tiny"], "--out noise.bin/tiny"),
    "build-policy/seed out of range": (["build-policy", "--seed", "-1"], "'--seed'"),
    # sharpe-rl reset
    "reset/missing runs folder": (["reset", "--runs-dir", "nope", "--yes"], "--runs-dir nope: no such folder"),
    "reset/unreadable runs folder": (["reset", "--runs-dir", "noise.bin", "--yes"], "noise.bin: not a folder"),
    # sharpe-rl serve
    "serve/unwritable runs folder": (["serve", "--runs-dir", "noise.bin"], "--runs-dir noise.bin"),
}


@pytest.mark.parametrize("args, named", CASES.values(), ids=CASES.keys())
def test_a_bad_input_is_answered_in_one_line_before_anything_starts(folder: Path, args: list[str], named: str):
    started = time.monotonic()
    result = runner.invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert named in lines[0]
    assert "Traceback" not in result.output and not result.stdout.strip()
    assert sorted(p.name for p in folder.iterdir()) == ["empty-runs", "noise.bin"]  # nothing made: no runs/, no policy
    assert not list((folder / "empty-runs").iterdir())
    assert time.monotonic() - started < 30  # answered at once, not after starting a server or a build


def test_a_usage_error_says_where_to_look(folder: Path):
    result = runner.invoke(app, ["run", "--cycles", "0"])
    assert result.stderr.strip() == (
        "error: Invalid value for '--cycles': Input should be greater than or equal to 1. See `sharpe-rl run --help`."
    )
