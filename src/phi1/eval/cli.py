"""`phi1 eval ...`: benchmarks, execution, solution loss and LLM-judged evals."""

from phi1.utils.groups import add_group

EVAL_MODULES = (
    ("phi1.eval.commands", ("execute", "humaneval", "mbpp", "loss")),
    ("phi1.eval.judge", ("judge",)),  # LLM-graded evaluation through phi1.llm
)


def register(subparsers, only: str | None = None) -> None:
    add_group(subparsers, "eval", "evaluate models: HumanEval/MBPP pass@k, execution, solution loss, LLM judge",
              EVAL_MODULES, only)
