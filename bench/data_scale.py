"""Data engine scaling: the whole filtering pipeline on 10, 100 and 300 MB of this machine's Python code.

    python bench/data_scale.py                                      # 10 and 100 MB, tasks 1, 2, 4 (~25 min)
    python bench/data_scale.py --sizes 10,100,300 --largest-tasks 2 # and 300 MB at tasks 2 (~55 min)
    python bench/data_scale.py --sizes 10,300 --tasks 2             # only the 10 -> 300 MB ratio (~30 min)
    python bench/data_scale.py --sizes 10 --tasks 2 --no-old-dedup  # a quick look (~2 min)

Corpus: the interpreter's standard library, then the venv's site-packages (collect's `python_stdlib`
and `site_packages`, cut at `limit_bytes`, files sorted by path). For every size and task count the
pipeline collect -> dedup (datatrove MinHash, code-token shingles) -> annotate (rules, sample) ->
classify -> score -> filter (top half) -> decontaminate (HumanEval) runs in a fresh
work directory, each stage as its own `python -m phi1 data run PIPE --until STAGE` subprocess (earlier
stages are skipped by fingerprint), with `--tasks T --workers min(T, 2)`. Per stage: wall time, peak
RSS of the process tree (sum over the runner, datatrove's pool workers and manager, polled from /proc
every 0.1 s; PSS beside it, since forked workers share pages), CPU seconds (user+sys of the tree, from
wait4's rusage) and MB/s of input text.

Side by side in the same run: phi1's first, single-process dedup (`bench/reference_dedup.py`, one
JSONL file, 2 workers, LSH index in the main process) on the concatenated collect shards of each size,
its time against the pipeline's dedup stage, and the Jaccard of the two kept id sets; then once more
with the file sorted by id, so that both keep the same record of a group (the old one keeps the first
in the file, the engine the smallest id). Then the ratios
(peak RSS largest/smallest size, MB/s largest/smallest size, tasks 2 vs 1) and an estimate of the
CPU-hours to filter 35B tokens (~120 GB) of Python on a Slurm cluster from the measured CPU-s per MB.

Prints a markdown report and writes a JSON result (default bench/results/data_scale.json). Times above
are for a 2-core machine shared with other tenants; the report says how much of the CPU they took
(`other CPU s`, and the cores two busy processes got at the start and end), and warns when phi1's
source changed during the run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("PHI1_NO_PROGRESS", "1")

STAGES = ["collect", "dedup", "annotate", "classify", "score", "filter", "decontaminate"]
INPUT_OF = {"dedup": "collect", "annotate": "dedup", "classify": "annotate", "score": "dedup", "filter": "score",
            "decontaminate": "filter"}
PAGE = os.sysconf("SC_PAGE_SIZE")
TOKENS_TARGET = 35e9
BYTES_PER_TOKEN = 3.5


# ---- measuring a process tree ---------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                s = fh.read()
        except OSError:
            continue
        ppid = int(s[s.rfind(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _rss_pss(pids: list[int]) -> tuple[int, int]:
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as fh:
                rss += int(fh.read().split()[1]) * PAGE
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            pass
    return rss, pss


def machine_busy_s() -> float:
    """CPU seconds the whole machine (every process, ours or not) has spent busy since boot."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def effective_cores(seconds: float = 1.0) -> float:
    """How many of this machine's cores two busy processes actually get right now (other tenants share them)."""
    code = ("import time; t=time.perf_counter(); c=time.process_time()\n"
            f"while time.process_time()-c<{seconds}: pass\n"
            "print(time.perf_counter()-t)")
    n = min(2, os.cpu_count() or 1)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    walls = [float(p.communicate()[0]) for p in procs]
    return n * seconds / max(walls)


def measured(cmd: list[str], log: Path, interval: float = 0.1) -> dict:
    """Run `cmd`; wall s, CPU s (user+sys of it and every descendant it reaped), peak tree RSS/PSS, and the
    CPU seconds other processes on the machine used meanwhile (`other_cpu_s`)."""
    peak = {"rss": 0, "pss": 0, "procs": 0}
    stop = threading.Event()
    busy0 = machine_busy_s()
    with log.open("w") as lf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=os.environ.copy())

        def poll():
            while not stop.is_set():
                pids = _tree(proc.pid)
                rss, pss = _rss_pss(pids)
                peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
                peak["procs"] = max(peak["procs"], len(pids))
                stop.wait(interval)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        th.join()
    busy = machine_busy_s() - busy0
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_mb": peak["rss"] / 1e6,
            "peak_pss_mb": peak["pss"] / 1e6, "max_proc_rss_mb": ru.ru_maxrss * 1024 / 1e6, "procs": peak["procs"],
            "other_cpu_s": max(0.0, busy - (ru.ru_utime + ru.ru_stime))}


def code_hash() -> str:
    """A hash of the installed phi1 package's *.py files: other people editing src/ mid-run show up here."""
    import hashlib

    import phi1

    h = hashlib.sha256()
    root = Path(phi1.__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
        try:
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:12]


# ---- stage outputs --------------------------------------------------------------------------------

def _loads():
    try:
        import orjson

        return orjson.loads
    except ImportError:
        return json.loads


def stage_output(stage_dir: Path, want_ids: bool = False) -> dict:
    """Records and text MB of a finished stage's data shards (and its kept id set if asked)."""
    loads, n, nbytes, ids = _loads(), 0, 0, set()
    for f in sorted((stage_dir / "data").glob("*.jsonl*")):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                rec = loads(line)
                n += 1
                nbytes += len(rec["text"].encode("utf-8", "surrogatepass"))
                if want_ids:
                    ids.add(rec["id"])
    out = {"records": n, "mb": nbytes / 1e6}
    if want_ids:
        out["ids"] = ids
    return out


def collected_source_mb(collect_dir: Path) -> float:
    with (collect_dir / "work" / "files.jsonl").open() as fh:
        return sum(json.loads(line)["size"] for line in fh) / 1e6


def installed_python_mb(exclude_tests: bool) -> float:
    """Bytes of *.py under the stdlib and site-packages that collect would list (no __pycache__ or dot dirs)."""
    from phi1.data.collect import python_install_sources

    total = 0
    for root in python_install_sources(True, True):
        for dp, dn, fn in os.walk(root):
            dn[:] = [d for d in dn if d != "__pycache__" and not d.startswith(".")]
            if exclude_tests and any(part in ("test", "tests") for part in Path(dp).parts):
                continue
            for f in fn:
                if f.endswith(".py"):
                    try:
                        total += os.path.getsize(os.path.join(dp, f))
                    except OSError:
                        pass
    return total / 1e6


# ---- the pipeline ---------------------------------------------------------------------------------

def write_pipeline(path: Path, workdir: Path, limit_mb: float, sample: int) -> None:
    import yaml

    cfg = {"workdir": str(workdir), "description": "bench/data_scale.py", "stages": [
        {"name": "collect", "python_stdlib": True, "site_packages": True, "max_bytes": 1_000_000,
         "limit_bytes": int(limit_mb * 1e6)},
        {"name": "dedup"},
        {"name": "annotate", "sample": sample, "annotator": "rules"},
        {"name": "classify", "input": "annotate", "encoder": "hashing", "n_estimators": 100},
        {"name": "score", "input": "dedup", "classifier": "@classify"},
        {"name": "filter", "top_fraction": 0.5},
        {"name": "decontaminate", "benchmarks": ["humaneval"]},
    ]}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def run_config(root: Path, size: float, tasks: int, sample: int, quiet: bool) -> dict:
    run_dir = root / f"{size:g}MB-t{tasks}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    pipe, wd = run_dir / "pipeline.yaml", run_dir / "wd"
    write_pipeline(pipe, wd, size, sample)
    workers = min(tasks, 2)
    base = [sys.executable, "-m", "phi1", "data", "run", str(pipe), "--tasks", str(tasks), "--workers", str(workers),
            "--quiet"]
    out_info: dict[str, dict] = {}
    rows = []
    for st in STAGES:
        code = code_hash()
        m = measured([*base, "--until", st], run_dir / f"{st}.log")
        if code_hash() != code:
            code += "+changed-during-stage"
        manifest = json.loads((wd / st / "manifest.json").read_text())
        if st == "score":  # the dedup stage's records with a score added: same text
            out_info[st] = {k: v for k, v in out_info["dedup"].items() if k != "ids"}
        elif st != "classify":
            out_info[st] = stage_output(wd / st, want_ids=st in ("dedup", "decontaminate"))
        mb_in = collected_source_mb(wd / "collect") if st == "collect" else out_info[INPUT_OF[st]]["mb"]
        row = {"stage": st, "size_mb": size, "tasks": tasks, "workers": workers, "mb_in": mb_in,
               "records_out": manifest["kept"], "dropped": manifest["dropped"], "code": code, **m,
               "mb_per_s": mb_in / m["wall_s"] if st != "classify" else None}
        rows.append(row)
        if not quiet:
            print(f"  {size:g} MB t{tasks} {st:<14} {mb_in:8.1f} MB {m['wall_s']:7.1f} s {m['cpu_s']:7.1f} cpu-s "
                  f"rss {m['peak_rss_mb']:6.0f} MB pss {m['peak_pss_mb']:6.0f} MB  kept {manifest['kept']}",
                  file=sys.stderr, flush=True)
    # A run where every stage is already finished: what one stage subprocess costs before any work.
    startup = measured([*base, "--until", "collect"], run_dir / "startup.log")
    return {"run_dir": run_dir, "rows": rows, "startup": startup, "outputs": out_info}


REFERENCE_DEDUP = Path(__file__).with_name("reference_dedup.py")


def old_dedup(collect_dir: Path, work: Path, workers: int, order: str = "file") -> dict:
    """phi1's first, single-process dedup (`bench/reference_dedup.py`) on the collect shards written
    into one JSONL file: in shard order (`file`), or sorted by id (`id`: the record it keeps of a
    group is then the one the engine keeps, the smallest id)."""
    work.mkdir(parents=True, exist_ok=True)
    src, out, rej = work / "collect.jsonl", work / f"old-dedup-{order}.jsonl", work / f"old-dedup-{order}.rejected.jsonl"
    lines = []
    with src.open("wb") as dst:
        for f in sorted((collect_dir / "data").glob("*.jsonl*")):
            with (gzip.open(f, "rb") if f.suffix == ".gz" else f.open("rb")) as fh:
                if order == "file":
                    shutil.copyfileobj(fh, dst)
                else:
                    lines += [ln for ln in fh if ln.strip()]
        if order == "id":
            loads = _loads()
            lines.sort(key=lambda ln: loads(ln)["id"])
            dst.writelines(lines)
            del lines
    m = measured([sys.executable, str(REFERENCE_DEDUP), str(src), str(out), str(rej), str(workers)],
                 work / f"old-dedup-{order}.log")
    loads = _loads()
    with out.open("rb") as fh:
        kept = {loads(line)["id"] for line in fh if line.strip()}
    with rej.open("rb") as fh:
        dup_of = {r["id"]: r["meta"].get("duplicate_of") for r in map(loads, fh) if r["id"]}
    src.unlink()
    return {**m, "ids": kept, "dup_of": dup_of}


def explain_difference(collect_dir: Path, new_dedup_dir: Path, old: dict, new_ids: set, threshold: float = 0.85) -> dict:
    """Why the kept sets differ: for each record only the old dedup kept, the true Jaccard of its 5-token
    shingle set with the record the new dedup names as `duplicate_of`; for each record only the new one
    kept, whether the old one's `duplicate_of` was dropped by the new one (the two keep different members)."""
    from phi1.data.tokens import code_tokens, shingle_hashes, token_hashes

    loads = _loads()
    only_old, only_new = old["ids"] - new_ids, new_ids - old["ids"]
    new_dup_of = {}
    for f in sorted((new_dedup_dir / "rejected").glob("*.jsonl*")):
        with gzip.open(f, "rb") as fh:
            for line in fh:
                r = loads(line)
                if r["id"] in only_old:
                    new_dup_of[r["id"]] = r["meta"].get("duplicate_of")
    need = only_old | {v for v in new_dup_of.values() if v}
    texts = {}
    for f in sorted((collect_dir / "data").glob("*.jsonl*")):
        with gzip.open(f, "rb") as fh:
            for line in fh:
                r = loads(line)
                if r["id"] in need:
                    texts[r["id"]] = r["text"]

    def shingles(t):
        return set(shingle_hashes(token_hashes(code_tokens(t)), 5).tolist())

    sims = []
    for rid in sorted(only_old):
        of = new_dup_of.get(rid)
        if of in texts and rid in texts:
            a, b = shingles(texts[rid]), shingles(texts[of])
            sims.append((len(a & b) / max(1, len(a | b)), rid, of))
    sims.sort()
    swapped = sum(1 for rid in only_new if old["dup_of"].get(rid) not in new_ids)
    below = [x for x in sims if x[0] < threshold]
    return {"only_old": len(only_old), "only_new": len(only_new), "threshold": threshold,
            "only_old_below_threshold": len(below),
            "only_old_jaccard_min": sims[0][0] if sims else None,
            "only_old_jaccard_median": sims[len(sims) // 2][0] if sims else None,
            "only_new_keep_rule_swaps": swapped,
            "examples": [{"id": rid, "dropped_as_duplicate_of": of, "shingle_jaccard": j} for j, rid, of in sims[:8]]}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


# ---- report ---------------------------------------------------------------------------------------

def _f(x, fmt="{:.1f}"):
    return "–" if x is None else fmt.format(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,100",
                    help="corpus sizes in MB, comma-separated (default 10,100: with 300 the run takes over an hour "
                         "on 2 shared cores; add 300 with --largest-tasks 2, or run --sizes 10,300 --tasks 2)")
    ap.add_argument("--tasks", default="1,2,4", help="task counts (workers = min(tasks, 2))")
    ap.add_argument("--largest-tasks", default="",
                    help="task counts for the largest size only (default: the same as --tasks)")
    ap.add_argument("--sample", type=int, default=2000, help="annotation sample (records)")
    ap.add_argument("--no-old-dedup", action="store_true", help="skip the single-process reference dedup")
    ap.add_argument("--work", help="work directory (default: a temp dir, removed at the end)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "data_scale.json"),
                    help="where the JSON result goes")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    sizes = sorted(float(s) for s in args.sizes.split(",") if s.strip())
    task_counts = [int(t) for t in args.tasks.split(",") if t.strip()]
    largest_tasks = [int(t) for t in args.largest_tasks.split(",") if t.strip()] or task_counts
    t_start = time.perf_counter()

    available = installed_python_mb(exclude_tests=False)
    notes = []
    if sizes[-1] > available:
        notes.append(f"installed Python code is {available:.0f} MB, less than {sizes[-1]:g} MB: the largest size "
                     f"uses all of it")
    root = Path(args.work or tempfile.mkdtemp(prefix="phi1-data-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "processor": platform.processor() or platform.machine()}
    try:
        import datatrove

        machine["datatrove"] = getattr(datatrove, "__version__", None) or _dist_version("datatrove")
    except ImportError:
        pass
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"phi1 data scale bench: {machine['processor']}, {machine['cpus']} CPUs, Python {machine['python']}, "
        f"installed Python code {available:.0f} MB, work dir {root}")

    machine["effective_cores_start"] = effective_cores()
    log(f"  two busy processes get {machine['effective_cores_start']:.2f} of {machine['cpus']} cores right now")
    rows, startups, kept_sets, dedup_cmp = [], [], {}, []
    for size in sizes:
        ids_by_tasks: dict[int, dict[str, set]] = {}
        tlist = largest_tasks if size == sizes[-1] and len(sizes) > 1 else task_counts
        for t in tlist:
            res = run_config(root, size, t, args.sample, args.quiet)
            rows += res["rows"]
            startups.append({"size_mb": size, "tasks": t, **res["startup"]})
            ids_by_tasks[t] = {st: res["outputs"][st]["ids"] for st in ("dedup", "decontaminate")}
            last_run = res
        first = ids_by_tasks[tlist[0]]
        kept_sets[size] = {f"tasks{t}": {st: (v[st] == first[st]) for st in v} for t, v in ids_by_tasks.items()}
        if not args.no_old_dedup:
            log(f"  {size:g} MB the single-process reference dedup (2 workers) ...")
            old = old_dedup(last_run["run_dir"] / "wd" / "collect", last_run["run_dir"] / "old", 2)
            new_rows = [r for r in rows if r["size_mb"] == size and r["stage"] == "dedup"]
            new_ids = ids_by_tasks[tlist[-1]]["dedup"]
            mb_in = new_rows[0]["mb_in"]
            why = explain_difference(last_run["run_dir"] / "wd" / "collect", last_run["run_dir"] / "wd" / "dedup",
                                     old, new_ids)
            cmp_row = {"size_mb": size, "mb_in": mb_in, "old_wall_s": old["wall_s"], "old_cpu_s": old["cpu_s"],
                       "old_peak_rss_mb": old["peak_rss_mb"], "old_peak_pss_mb": old["peak_pss_mb"],
                       "old_kept": len(old["ids"]), "new_kept": len(new_ids),
                       "new": {f"tasks{r['tasks']}": {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"],
                                                      "peak_rss_mb": r["peak_rss_mb"]} for r in new_rows},
                       "kept_jaccard": jaccard(old["ids"], new_ids),
                       "only_old": len(old["ids"] - new_ids), "only_new": len(new_ids - old["ids"]), "difference": why}
            by_id = old_dedup(last_run["run_dir"] / "wd" / "collect",
                              last_run["run_dir"] / "old", 2, order="id")
            cmp_row["same_keep_rule"] = {"old_kept": len(by_id["ids"]), "kept_jaccard": jaccard(by_id["ids"], new_ids),
                                         "only_old": len(by_id["ids"] - new_ids), "only_new": len(new_ids - by_id["ids"])}
            dedup_cmp.append(cmp_row)
            log(f"    old {old['wall_s']:.1f} s, kept {len(old['ids'])}; new kept {len(new_ids)}; "
                f"Jaccard {cmp_row['kept_jaccard']:.4f}; input in id order (same keep rule): "
                f"{cmp_row['same_keep_rule']['kept_jaccard']:.4f}")
        if not args.work:
            for t in tlist:
                shutil.rmtree(root / f"{size:g}MB-t{t}", ignore_errors=True)

    machine["effective_cores_end"] = effective_cores()
    total_s = time.perf_counter() - t_start
    report = render(rows, startups, kept_sets, dedup_cmp, sizes, task_counts, machine, available, notes, total_s)
    print(report["markdown"])
    out = {"bench": "data_scale", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
           "machine": machine, "installed_python_mb": available, "notes": notes, "sizes_mb": sizes,
           "tasks": task_counts, "largest_tasks": largest_tasks, "annotate_sample": args.sample,
           "stages": rows, "startup": startups, "kept_sets_equal_across_tasks": {f"{k:g}": v for k, v in kept_sets.items()},
           "dedup_vs_single_process": dedup_cmp, "summary": report["summary"], "cpu_hours_35b": report["estimate"],
           "total_bench_s": round(total_s, 1)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(_rounded(out), indent=2) + "\n")
    log(f"wrote {args.json}; bench took {total_s / 60:.1f} min")
    if not args.work:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _rounded(x):
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v) for v in x]
    return x


def render(rows, startups, kept_sets, dedup_cmp, sizes, task_counts, machine, available, notes, total_s) -> dict:
    L = []
    L.append(f"## phi1 data pipeline scaling ({machine['cpus']} CPUs, Python {machine['python']}, "
             f"datatrove {machine.get('datatrove')})\n")
    L.append(f"Corpus: this machine's stdlib + site-packages ({available:.0f} MB of *.py installed). "
             "Per stage: wall s, MB/s of input text, peak RSS of the process tree (sum; PSS in the JSON), "
             "CPU s (user+sys of the tree). workers = min(tasks, 2).\n")
    L.append(f"Machine load: two busy processes got {machine['effective_cores_start']:.2f} cores at the start and "
             f"{machine['effective_cores_end']:.2f} at the end (2.00 = both cores free); 'other CPU s' below is what "
             "the rest of the machine (other tenants, this bench's poller) used while each configuration ran. "
             "Wall times and speedups depend on it; CPU seconds much less.\n")
    codes = sorted({r["code"] for r in rows})
    if len(codes) > 1:
        where = {c: sorted({f"{r['size_mb']:g}MB/t{r['tasks']}/{r['stage']}" for r in rows if r["code"] == c})
                 for c in codes}
        L.append("**Warning: phi1's source changed during this run** (someone edited src/), so configurations ran "
                 "different code and kept sets or times may differ for that reason alone: " +
                 "; ".join(f"{c}: {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}" for c, v in where.items()) + "\n")
    for n in notes:
        L.append(f"Note: {n}\n")
    tasks_seen = sorted({r["tasks"] for r in rows})
    hdr = "| stage | size MB | MB in |" + "".join(f" t{t} wall s | t{t} MB/s | t{t} RSS MB | t{t} CPU s |"
                                                    for t in tasks_seen) + " t2/t1 speedup |"
    L.append(hdr)
    L.append("|" + "---|" * (3 + 4 * len(tasks_seen) + 1))
    by = {(r["stage"], r["size_mb"], r["tasks"]): r for r in rows}
    for st in STAGES:
        for size in sizes:
            present = [by.get((st, size, t)) for t in tasks_seen]
            if not any(present):
                continue
            mb_in = next(r for r in present if r)["mb_in"]
            cells = ""
            for r in present:
                if r is None:
                    cells += " | | | |"
                else:
                    cells += (f" {r['wall_s']:.1f} | {_f(r['mb_per_s'], '{:.2f}')} | {r['peak_rss_mb']:.0f} |"
                              f" {r['cpu_s']:.1f} |")
            r1, r2 = by.get((st, size, 1)), by.get((st, size, 2))
            sp = f"{r1['wall_s'] / r2['wall_s']:.2f}x" if r1 and r2 else "–"
            L.append(f"| {st} | {size:g} | {mb_in:.1f} |{cells} {sp} |")
    # totals per config
    L.append("")
    L.append("| size MB | tasks | pipeline wall s | pipeline CPU s | other CPU s | max stage RSS MB | max stage PSS MB | "
             "corpus MB/s (wall) | corpus MB per CPU s |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for t in tasks_seen:
            rs = [r for r in rows if r["size_mb"] == size and r["tasks"] == t]
            if not rs:
                continue
            w, c = sum(r["wall_s"] for r in rs), sum(r["cpu_s"] for r in rs)
            corpus = next(r for r in rs if r["stage"] == "dedup")["mb_in"]
            o = sum(r["other_cpu_s"] for r in rs)
            L.append(f"| {size:g} | {t} | {w:.1f} | {c:.1f} | {o:.1f} | {max(r['peak_rss_mb'] for r in rs):.0f} | "
                     f"{max(r['peak_pss_mb'] for r in rs):.0f} | {corpus / w:.2f} | {corpus / c:.3f} |")
    st_wall = sum(s["wall_s"] for s in startups) / max(1, len(startups))
    st_cpu = sum(s["cpu_s"] for s in startups) / max(1, len(startups))
    st_rss = max((s["peak_rss_mb"] for s in startups), default=0)
    L.append(f"\nFixed cost of one stage subprocess (a rerun where the stage is already finished: imports, "
             f"YAML, fingerprints): {st_wall:.2f} s wall, {st_cpu:.2f} CPU s, {st_rss:.0f} MB RSS; included above.\n")

    # scaling summary: the smallest size vs each larger one, at a task count present at both
    summary = {"rss_growth": {}, "pss_growth": {}, "throughput_ratio": {}, "throughput_ratio_net": {},
               "cpu_efficiency_ratio": {}, "speedup_t2_t1": {}}
    lo = sizes[0]
    for hi in sizes[1:]:
        common = [t for t in tasks_seen if by.get(("dedup", lo, t)) and by.get(("dedup", hi, t))]
        if not common:
            continue
        tc = 2 if 2 in common else common[0]
        key = f"{lo:g}->{hi:g}MB@t{tc}"
        for d in ("rss_growth", "pss_growth", "throughput_ratio", "throughput_ratio_net", "cpu_efficiency_ratio"):
            summary[d][key] = {}
        L.append(f"Scaling {lo:g} -> {hi:g} MB at tasks={tc} (linear throughput = ratio 1.00; the issue asks "
                 f">= 0.85; 'net' subtracts the fixed subprocess cost above from both walls; 'MB per CPU s' is the "
                 "same ratio on CPU time, which other tenants disturb less):\n")
        L.append(f"| stage | RSS {lo:g} MB | RSS {hi:g} MB | RSS ratio | PSS ratio | MB/s {lo:g} | MB/s {hi:g} | "
                 f"MB/s ratio | net ratio | MB per CPU s ratio | within 15% of linear? |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for st in STAGES:
            a, b = by.get((st, lo, tc)), by.get((st, hi, tc))
            if not a or not b:
                continue
            rr = b["peak_rss_mb"] / a["peak_rss_mb"]
            pr = b["peak_pss_mb"] / a["peak_pss_mb"]
            summary["rss_growth"][key][st], summary["pss_growth"][key][st] = rr, pr
            if st == "classify":
                L.append(f"| {st} | {a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} | {rr:.2f} | {pr:.2f} | – | – | "
                         f"– (fixed sample) | – | – | – |")
                continue
            cr = (b["mb_in"] / b["cpu_s"]) / (a["mb_in"] / a["cpu_s"])
            tr = b["mb_per_s"] / a["mb_per_s"]
            net_a = a["mb_in"] / max(1e-6, a["wall_s"] - st_wall)
            net_b = b["mb_in"] / max(1e-6, b["wall_s"] - st_wall)
            summary["throughput_ratio"][key][st], summary["throughput_ratio_net"][key][st] = tr, net_b / net_a
            summary["cpu_efficiency_ratio"][key][st] = cr
            ok = f"wall {'yes' if net_b / net_a >= 0.85 else 'no'}, CPU {'yes' if cr >= 0.85 else 'no'}"
            L.append(f"| {st} | {a['peak_rss_mb']:.0f} | {b['peak_rss_mb']:.0f} | {rr:.2f} | {pr:.2f} | "
                     f"{a['mb_per_s']:.2f} | {b['mb_per_s']:.2f} | {tr:.2f} | {net_b / net_a:.2f} | {cr:.2f} | {ok} |")
        L.append("")
    if 1 in tasks_seen and 2 in tasks_seen:
        L.append("Tasks 2 vs 1 (same size; wall-time speedup on this machine's cores):\n")
        L.append("| stage | " + " | ".join(f"{s:g} MB" for s in sizes) + " |")
        L.append("|---|" + "---|" * len(sizes))
        for st in STAGES:
            cells = []
            for s in sizes:
                a, b = by.get((st, s, 1)), by.get((st, s, 2))
                if a and b:
                    summary["speedup_t2_t1"].setdefault(st, {})[f"{s:g}"] = a["wall_s"] / b["wall_s"]
                    cells.append(f"{a['wall_s'] / b['wall_s']:.2f}x")
                else:
                    cells.append("–")
            L.append(f"| {st} | " + " | ".join(cells) + " |")
        L.append("")
    same = all(v for per in kept_sets.values() for t in per.values() for v in t.values())
    L.append(f"Kept sets (dedup and decontaminate) identical across task counts at every size: "
             f"{'yes' if same else 'NO: ' + json.dumps({f'{k:g}': v for k, v in kept_sets.items()})}\n")

    if dedup_cmp:
        L.append("Near-dedup: the pipeline's datatrove MinHash stage vs phi1's first, single-process dedup "
                 "(`bench/reference_dedup.py`, 2 workers, same corpus). Last column: the same, with the reference "
                 "given the corpus sorted by id, so both keep the same record of a group:\n")
        L.append("| size MB | MB in | old wall s | old CPU s | old RSS MB | " +
                 " | ".join(f"new t{t} wall s" for t in tasks_seen) + " | new/old wall (t2) | old kept | new kept | "
                 "only old | only new | kept Jaccard | Jaccard, same keep rule |")
        L.append("|---|---|---|---|---|" + "---|" * len(tasks_seen) + "---|---|---|---|---|---|---|")
        for c in dedup_cmp:
            news = [c["new"].get(f"tasks{t}") for t in tasks_seen]
            n2 = c["new"].get("tasks2") or next(n for n in news if n)
            L.append(f"| {c['size_mb']:g} | {c['mb_in']:.1f} | {c['old_wall_s']:.1f} | {c['old_cpu_s']:.1f} | "
                     f"{c['old_peak_rss_mb']:.0f} | " + " | ".join(f"{n['wall_s']:.1f}" if n else "–" for n in news) +
                     f" | {n2['wall_s'] / c['old_wall_s']:.2f} | {c['old_kept']} | {c['new_kept']} | {c['only_old']} | "
                     f"{c['only_new']} | {c['kept_jaccard']:.4f} {'(>= 0.97)' if c['kept_jaccard'] >= 0.97 else '(< 0.97!)'} | "
                     + (f"{c['same_keep_rule']['kept_jaccard']:.4f}" if c.get("same_keep_rule") else "–") + " |")
        L.append("")
        for c in dedup_cmp:
            d = c["difference"]
            if not d["only_old"] and not d["only_new"]:
                continue
            L.append(f"{c['size_mb']:g} MB: of the {d['only_old']} records only the old dedup keeps, "
                     f"{d['only_old_below_threshold']} have a true 5-token-shingle Jaccard below {d['threshold']} with "
                     f"the record the new one names as `duplicate_of` (min {_f(d['only_old_jaccard_min'], '{:.2f}')}, "
                     f"median {_f(d['only_old_jaccard_median'], '{:.2f}')}; the old one drops only records whose MinHash "
                     f"estimate against a kept one reaches {d['threshold']}). Of the {d['only_new']} only the new one keeps, "
                     f"{d['only_new_keep_rule_swaps']} are kept by the new one in place of a cluster member the old one "
                     "kept (old keeps the first in file order, new the smallest id). Lowest: " +
                     ", ".join(f"{e['id']} ~ {e['dropped_as_duplicate_of']} {e['shingle_jaccard']:.2f}"
                               for e in d["examples"][:4]) + "\n")

    estimate = cpu_hours(rows, sizes, L)
    L.append(f"Bench wall time: {total_s / 60:.1f} min.")
    return {"markdown": "\n".join(L), "summary": summary, "estimate": estimate}


def cpu_hours(rows, sizes, L) -> dict:
    """CPU-hours for ~120 GB of Python from the largest size's CPU-s per MB of corpus, per stage."""
    hi = sizes[-1]
    rs = [r for r in rows if r["size_mb"] == hi]
    tmax = max(r["tasks"] for r in rs)
    rs = {r["stage"]: r for r in rs if r["tasks"] == tmax}
    corpus_mb = rs["dedup"]["mb_in"]
    target_mb = TOKENS_TARGET * BYTES_PER_TOKEN / 1e6
    L.append(f"CPU-hours to filter 35B tokens of Python (35e9 tokens x {BYTES_PER_TOKEN} bytes/token = "
             f"{target_mb / 1e3:.1f} GB = {target_mb:.3g} MB), from the {hi:g} MB run at tasks={tmax} "
             f"(corpus {corpus_mb:.1f} MB after collect). Per-MB rates are per MB of *corpus* (each stage's CPU s / "
             f"{corpus_mb:.1f}), so stages that see less input (filter, decontaminate) are already discounted; "
             "classify works on a fixed sample and is counted once:\n")
    L.append("| stage | CPU s measured | CPU s / corpus MB | CPU-h for 120 GB |")
    L.append("|---|---|---|---|")
    per_mb, total_h, stages_out = 0.0, 0.0, {}
    for st in STAGES:
        r = rs[st]
        if st == "classify":
            h = r["cpu_s"] / 3600
            L.append(f"| {st} | {r['cpu_s']:.1f} | (fixed) | {h:.3f} |")
        else:
            rate = r["cpu_s"] / corpus_mb
            per_mb += rate
            h = rate * target_mb / 3600
            L.append(f"| {st} | {r['cpu_s']:.1f} | {rate:.3f} | {h:,.0f} |")
        total_h += h
        stages_out[st] = {"cpu_s": r["cpu_s"], "cpu_s_per_corpus_mb": None if st == "classify" else r["cpu_s"] / corpus_mb,
                          "cpu_h_120gb": h}
    L.append(f"| **total** | | {per_mb:.3f} | **{total_h:,.0f}** |")
    L.append(f"\nArithmetic: {per_mb:.3f} CPU-s/MB x {target_mb:.3g} MB = {per_mb * target_mb:,.0f} CPU-s "
             f"= {per_mb * target_mb / 3600:,.0f} CPU-h (+ classify {rs['classify']['cpu_s']:.0f} s) "
             f"= about {total_h:,.0f} CPU-hours; e.g. {total_h / 256:.1f} h wall on 256 cores if the parallel "
             "blocks keep them busy. Caveats: collect here reads files from a local disk (The Stack comes as "
             "Parquet), the fixed per-stage subprocess cost is included (it shrinks per MB on a cluster), and "
             "MinHash's buckets block (one task per band) and clusters block (one task) are serial parts "
             "whose cost grows with the number of documents and duplicates, not only bytes.\n")
    return {"target_mb": target_mb, "from_size_mb": hi, "tasks": tmax, "corpus_mb": corpus_mb,
            "cpu_s_per_corpus_mb": per_mb, "cpu_hours": total_h, "stages": stages_out}


if __name__ == "__main__":
    raise SystemExit(main())
