"""`phi1 data ...`: the data stages, each contributed by its own module."""

from phi1.utils.groups import add_group

DATA_MODULES = (
    ("phi1.data.stages_cli", ("collect", "dedup", "annotate", "classify", "filter", "decontaminate",
                              "mine-exercises", "run")),
    ("phi1.data.pack", ("pack",)),  # token shards for training
)


def register(subparsers, only: str | None = None) -> None:
    add_group(subparsers, "data", "data stages: collect, dedup, annotate, classify, filter, decontaminate, "
              "mine-exercises, run, pack", DATA_MODULES, only)
