"""The `exercises` stage: each self-contained, documented top-level function of a record becomes a
CodeExercises-style pair (`phi1.data.mine`): prompt = needed imports + signature + docstring,
completion = the body. The pairs get the dedup stage's MinHash blocks and the decontamination filter."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from phi1.data.decontam import DecontamParams, Decontaminator
from phi1.data.decontam_steps import DecontaminationFilter
from phi1.data.engine import Block, RecordReader, RecordWriter
from phi1.data.mine import MineConfig, extract_exercises
from phi1.data.minhash import MinhashParams
from phi1.data.minhash_steps import dedup_blocks
from phi1.data.records import StageReport, finish_report
from phi1.data.stages.base import DemoPlace, StageContext, StageKind, commit_block, config_of, run_stage_file


@dataclass
class ExercisesStage(MineConfig):
    """The exercises stage's settings: which functions qualify (`MineConfig`), and the benchmarks the
    exercises are decontaminated against."""

    decontaminate: bool = True  # decontaminate the exercises against the benchmarks
    benchmarks: list[str] = field(default_factory=lambda: ["humaneval"])  # built-in benchmarks to protect
    benchmark_files: list[str] = field(default_factory=list)  # benchmark JSONL files (HumanEval or MBPP format)

    def decontaminator_kwargs(self) -> dict:
        return dict(benchmarks=list(self.benchmarks), benchmark_files=list(self.benchmark_files),
                    **DecontamParams().params())


class MineExercises(PipelineStep):
    """Each self-contained, documented top-level function of a record becomes an exercise record:
    `meta.prompt` (needed imports + signature + docstring), `meta.completion` (the body)."""

    name = "mine exercises"

    def __init__(self, cfg: MineConfig):
        super().__init__()
        self.cfg = cfg

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            self.stat_update("files")
            exercises, why = extract_exercises(doc.text, self.cfg)
            for k, v in why.items():
                self.stat_update(f"skipped_{k}", value=v)
            for ex in exercises:
                self.stat_update("exercises")
                yield Document(text=ex["prompt"] + ex["completion"], id=f"{doc.id}::{ex['name']}",
                               metadata={"prompt": ex["prompt"], "completion": ex["completion"], "function": ex["name"],
                                         "source_id": doc.id, "source": doc.metadata.get("source"), "kind": "exercise"})


def build_exercises(ctx: StageContext, cfg: ExercisesStage) -> list[Block]:
    """Extract in parallel, then the same MinHash dedup and decontamination as the corpus."""
    cand, unique = ctx.work / "candidates", ctx.work / "unique"
    blocks = [Block("extract", [ctx.reader(), MineExercises(cfg), RecordWriter(cand)], tasks=ctx.tasks)]
    for b in dedup_blocks(cand, ctx.work / "dedup", unique, ctx.rejected_writer("dedup"), ctx.tasks, MinhashParams()):
        b.name = f"dedup-{b.name}"
        blocks.append(b)
    if cfg.decontaminate:
        blocks.append(Block("decontaminate", [RecordReader(unique),
                                              DecontaminationFilter(cfg.decontaminator_kwargs(),
                                                                    ctx.rejected_writer("decontaminate")),
                                              ctx.writer()], tasks=ctx.tasks))
    else:
        blocks.append(Block("copy", [RecordReader(unique), ctx.writer()], tasks=ctx.tasks))
    blocks.append(commit_block(ctx))
    return blocks


def run_exercises(input_path: str | os.PathLike, output_path: str | os.PathLike, *, cfg: ExercisesStage | None = None,
                  workers: int = 0, skip_bad_lines: bool = False, rejected: str | None = None, quiet: bool = False,
                  overwrite: bool = False, **options) -> StageReport:
    """Write one exercise record per qualifying function (text = prompt + completion), deduplicated and
    decontaminated; parsing runs in `workers` tasks. `options` are `ExercisesStage` fields."""
    cfg = config_of(KIND, cfg, options)
    if cfg.decontaminate:
        Decontaminator(list(cfg.benchmarks), list(cfg.benchmark_files))  # a bad benchmark fails here, once
    report, m = run_stage_file(KIND, cfg, input_path, output_path, rejected=rejected, skip_bad_lines=skip_bad_lines,
                               quiet=quiet, overwrite=overwrite, workers=workers)
    # `read` counts source files; kept/dropped count exercises; functions skipped by the rules are in details.
    skips: dict[str, int] = {}
    for key, n in m["counts"].items():
        tail = key.rsplit("/", 1)[-1]
        if key.startswith("extract/") and tail.startswith("skipped_"):
            skips[tail[len("skipped_"):]] = skips.get(tail[len("skipped_"):], 0) + n
    report.details.update(files=report.read, skipped_functions=dict(sorted(skips.items())))
    return finish_report(report, quiet)


KIND = StageKind(
    "exercises", ExercisesStage, build_exercises, run_exercises,
    help="extract documented self-contained functions as prompt/completion exercises",
    inputs=("benchmark_files",), aliases={"benchmarks": ["--benchmark"], "benchmark_files": ["--benchmark-file"]},
    demo=DemoPlace("dedup", "mine docstring exercises"))
