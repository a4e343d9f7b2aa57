"""`phi1 eval ...`: benchmarks, execution, solution loss and LLM-judged evals."""

from phi1.utils.groups import add_group

EVAL_MODULES = (
    "phi1.eval.commands",  # execute, humaneval, mbpp, loss
    "phi1.synth.judge",    # judge (LLM-graded evaluation, shares the synth client)
)


def register(subparsers) -> None:
    add_group(subparsers, "eval", "evaluate models: HumanEval/MBPP pass@k, execution, solution loss, LLM judge", EVAL_MODULES)
