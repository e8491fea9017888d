"""What the diversity terms and the elite archive add to a cycle: an overnight run, 48 cycles × 16.

Replays the synthetic run of `bench/report_speed.py` (realistic code, several families, wrappers,
the original post-mortem's failure mix) cycle by cycle, as the score and log steps would from the
cycle's history (the earlier cycles' buffer frame): `Visits.from_frame`, `diversity_rewards` on the
batch, then `EliteArchive.from_frame`, `EliteArchive.add` and `save_archive`. Prints the CPU seconds
per cycle (mean and worst, in one process, so earlier specs are already classified and normalised),
and the cold costs a restarted run pays once: `Visits.from_frame` and `EliteArchive.from_frame` over
the whole run with empty caches. Goal: under 1 s of CPU per cycle.

    .venv/bin/python bench/diversity_speed.py [--cycles 48] [--batch 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl
from report_speed import synthetic_frame

from sharpe_rl.archive import EliteArchive, save_archive
from sharpe_rl.classify import classify_spec_json
from sharpe_rl.config import RewardConfig
from sharpe_rl.diversity import Visits, diversity_rewards, normalised_code_hash
from sharpe_rl.experience import Experience

FORMAT_ERRORS = ("json_parse", "schema", "syntax", "forbidden_import")


def experiences(rows: pl.DataFrame) -> list[Experience]:
    return [
        Experience(
            run=row["run"],
            cycle=row["cycle"],
            index=row["index"],
            prompt_version=row["prompt_version"],
            prompt="",
            completion="",
            prompt_token_ids=[1],
            completion_token_ids=[1],
            logprobs=[0.0],
            spec_json=row["spec_json"],
            name=row["name"],
            error_class=row["error_class"],
            metrics={} if row["metric_sharpe_net"] is None else {"sharpe_net": row["metric_sharpe_net"]},
            reward=row["reward"],
            code_hash=row["code_hash"],
            cache_key=row["cache_key"],
        )
        for row in rows.iter_rows(named=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    frame = synthetic_frame(args.cycles, args.batch).with_columns(
        cache_key=pl.when(pl.col("error_class").is_in(FORMAT_ERRORS).not_()).then(pl.col("code_hash"))
    )
    cfg = RewardConfig(novelty_weight=0.2, copy_penalty=0.5)
    per_cycle = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for cycle in range(args.cycles):
            batch = experiences(frame.filter(pl.col("cycle") == cycle))
            started = time.process_time()
            earlier = frame.filter(pl.col("cycle") < cycle)
            rewards = diversity_rewards(batch, Visits.from_frame(earlier), cfg)
            archive = EliteArchive.from_frame(earlier, "bench")
            archive.add(cycle, batch)
            save_archive(Path(runs_dir), archive)
            per_cycle.append(time.process_time() - started)
        assert len(rewards) == args.batch
        classify_spec_json.cache_clear()
        normalised_code_hash.cache_clear()
        started = time.process_time()
        Visits.from_frame(frame)
        cold_visits = time.process_time() - started
        classify_spec_json.cache_clear()
        started = time.process_time()
        rebuilt = EliteArchive.from_frame(frame, "bench")
        rebuild = time.process_time() - started
    assert rebuilt.elites == archive.elites
    mean, worst = sum(per_cycle) / len(per_cycle), max(per_cycle)
    print(f"{frame.height} experiments ({args.cycles} cycles × {args.batch})")
    print(f"added to score + log per cycle: mean {mean:.3f} s CPU, worst {worst:.3f} s")
    print(f"archive: {len(archive.elites)} cells filled, QD score {archive.qd_score:.2f}")
    print(f"after a restart, once: visits of the whole run {cold_visits:.3f} s, archive rebuild {rebuild:.3f} s CPU")
    print("goal: under 1 s of CPU per cycle —", "met" if worst < 1 else "MISSED")


if __name__ == "__main__":
    main()
