"""`phi1 data ...`: one command per stage kind of the registry (`phi1.data.stages`), the pipeline
runner and its schema, and the token shards."""

from phi1.data.stages import builtin_names
from phi1.utils.groups import add_group

DATA_MODULES = (
    ("phi1.data.stages.cli", (*builtin_names(), "classify-eval", "run", "schema")),
    ("phi1.data.pack", ("pack",)),  # token shards for training
)


def register(subparsers, only: str | None = None) -> None:
    add_group(subparsers, "data", "data stages: " + ", ".join(builtin_names()) + "; run (a pipeline YAML), "
              "schema, pack", DATA_MODULES, only)
