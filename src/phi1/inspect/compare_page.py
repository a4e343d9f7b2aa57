"""compare.md and compare.html for `phi1 compare` (see compare.py for what is compared)."""

from __future__ import annotations

from phi1.inspect import html as H

SET_TITLES = {"judge": "Unconventional problems (phi1's judge set; tests = the docstring examples)",
              "humaneval": "HumanEval prompts (their tests)",
              "library": "Prompts that need a library (tests in resources/library_prompts.jsonl)"}


def _score(side: dict) -> str:
    s = f"{side['passed']}/{side['tested']} pass" if side["tested"] else "no tests"
    if side["judged"]:
        s += f", judge {side['judge_mean']:.2f}/10 (n={side['judged']})"
    return s


def compare_markdown(rep: dict) -> str:
    lines = [f"# base vs tuned: {rep['base']} vs {rep['tuned']}", "",
             f"Greedy decoding, at most {rep['settings']['max_new_tokens']} new tokens. "
             f"Judge: {rep['settings']['judge_model'] or 'none'}.", "",
             "| prompts | n | base | tuned |", "|---|---|---|---|"]
    for s, row in rep["summary"].items():
        lines.append(f"| {s} | {row['prompts']} | {_score(row['base'])} | {_score(row['tuned'])} |")
    if rep.get("exercise_mentions") is not None:
        lines += ["", "Exercise records that mention each library: "
                  + ", ".join(f"{k} {v}" for k, v in rep["exercise_mentions"].items())]
    flips = [it for it in rep["items"] if it["base"]["passed"] is False and it["tuned"]["passed"] is True]
    lost = [it for it in rep["items"] if it["base"]["passed"] is True and it["tuned"]["passed"] is False]
    lines += ["", f"Passed only by tuned: {', '.join(i['id'] for i in flips) or 'none'}.",
              f"Passed only by base: {', '.join(i['id'] for i in lost) or 'none'}."]
    return "\n".join(lines) + "\n"


def _badge(r: dict) -> str:
    if r["passed"] is None:
        out = "<span class='none'>no tests</span>"
    elif r["passed"]:
        out = "<span class='pass'>pass</span>"
    else:
        out = f"<span class='fail'>fail ({H.esc(r['outcome'])})</span>"
    if r.get("judge"):
        out += " &middot; judge " + ", ".join(f"{H.esc(k)} {v:g}" for k, v in r["judge"].items())
    if r.get("finish_reason") == "prompt_too_long":
        out += " <span class='muted'>(prompt longer than the context)</span>"
    return out


def compare_html(rep: dict) -> str:
    rows = [[H.esc(s), str(row["prompts"]), H.esc(_score(row["base"])), H.esc(_score(row["tuned"]))]
            for s, row in rep["summary"].items()]
    body = [f"<p>base <code>{H.esc(rep['base'])}</code>, tuned <code>{H.esc(rep['tuned'])}</code>; greedy, at most "
            f"{rep['settings']['max_new_tokens']} new tokens; judge: {H.esc(rep['settings']['judge_model'] or 'none')}."
            "</p>", H.table(["prompts", "n", "base", "tuned"], rows, raw=True)]
    if rep.get("exercise_mentions") is not None:
        body.append("<p>Exercise records that mention each library: "
                    + H.esc(", ".join(f"{k} {v}" for k, v in rep["exercise_mentions"].items())) + "</p>")
    for s in rep["summary"]:
        body.append(f"<h2>{H.esc(SET_TITLES.get(s, s))}</h2>")
        trs = []
        for it in (i for i in rep["items"] if i["set"] == s):
            title = H.esc(it["id"]) + (f"<br><span class='muted'>{H.esc(it['library'])}</span>" if it["library"] else "")
            trs.append([title, f"<pre>{H.esc(it['prompt'])}</pre>",
                        f"{_badge(it['base'])}<pre>{H.esc(it['base']['completion'])}</pre>",
                        f"{_badge(it['tuned'])}<pre>{H.esc(it['tuned']['completion'])}</pre>"])
        body.append(H.table(["id", "prompt", "base", "tuned"], trs, raw=True, cls="fixed"))
    return H.page("base vs tuned", body)
