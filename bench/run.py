"""Run the whole benchmark and write docs/benchmarks.md: `python -m bench.run`.

    .venv/bin/pip install -e ".[bench]"        # the peers: TRL (transformers' Trainer comes with tuneforge)
    .venv/bin/python -m bench.run              # every family, 2 interleaved repeats, profile, serving: < 30 min

Protocol: for each family, every configuration runs in its own fresh process (so peak resident memory is that
configuration's alone, read from the finished process's rusage), in the order A B C D, then D C B A (a palindrome
cancels a linear drift of the machine's speed), and each row reports the mean of its repeats. Repeat r shuffles
the data with seed r (the same base weights), so the spread of the losses over repeats measures how much the
data order alone moves them: the noise a loss difference between configurations is judged against. The seq2seq model
that tuneforge trained is then used for the evaluation-speed measurement; then the SmolLM2 chat step is profiled
(`bench/profile.py`) and the chat run tuneforge trained is served through the demo's chat path (`bench/serve.py`).
Results go to `<work>/results.json` and, with `--report`, to a markdown file with the JSON attached.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.families import FAMILIES, ensure_base, scaled
from bench.report import summarize, write_report

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    """CPU model, cores, memory, load and library versions of the machine the numbers come from."""
    from importlib import metadata

    model = "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                     model)
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for name in ("torch", "transformers", "accelerate", "peft", "datasets", "trl", "tokenizers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1), "gpu": "none",
            "python": platform.python_version(), "os": platform.platform(), "versions": versions}


def run_worker(args: list[str], log: Path) -> tuple[float, float, int]:
    """Run `python -m bench.worker ARGS` to completion.

    Returns:
        (wall seconds, peak resident memory in MiB of that process, exit status)
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bench.worker", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, proc.returncode


def run_stage(module_args: list[str], out: Path, log: Path) -> dict:
    """Run `python -m MODULE ARGS --out OUT` (profile, serving) and return its JSON, or {"error"} if it failed."""
    out.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with open(log, "w") as sink:
        code = subprocess.call([sys.executable, "-m", *module_args, "--out", str(out)], stdout=sink,
                               stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    result = json.loads(out.read_text()) if code == 0 and out.is_file() else {"error": f"exit {code}, see {log}"}
    result["seconds"] = time.perf_counter() - t0
    print(f"[bench] {module_args[0]}: {'failed' if 'error' in result else 'done'} in {result['seconds']:.0f} s",
          flush=True)
    return result


def rerun_stage(stage: str, work: Path, report: Path | None, profile_steps: int) -> int:
    """Rerun the profile or serving stage alone on `work/results.json` (a finished run) and rewrite the report.

    The result records the rerun (`reruns`: stage, date, load average, seconds), which the report states.
    """
    result = json.loads((work / "results.json").read_text())
    load = os.getloadavg()
    if stage == "profile":
        result["profile"] = run_stage(["bench.profile", "--work", str(work), "--steps", str(profile_steps)],
                                      work / "results" / "profile.json", work / "logs" / "profile.log")
    else:
        result["serving"] = run_stage(["bench.serve", "--run", str(work / "runs" / "chat-tuneforge-r0")],
                                      work / "results" / "serving.json", work / "logs" / "serving.log")
    result.setdefault("reruns", []).append({
        "stage": stage, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "load_average_start": load, "seconds": result[stage]["seconds"]})
    (work / "results.json").write_text(json.dumps(result, indent=1))
    if report is not None:
        write_report(result, report)
    return 0 if "error" not in result[stage] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tuneforge vs transformers Trainer / TRL SFTTrainer benchmark")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated, default: all")
    parser.add_argument("--reps", type=int, default=2, help="repeats of each configuration (interleaved)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every family's steps (smoke runs)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tuneforge-bench"), help="runs, bases and logs")
    parser.add_argument("--report", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--no-evalspeed", action="store_true", help="skip the generation-speed measurement")
    parser.add_argument("--no-profile", action="store_true", help="skip the SmolLM2 step profile (bench/profile.py)")
    parser.add_argument("--no-serving", action="store_true", help="skip the chat serving speed (bench/serve.py)")
    parser.add_argument("--profile-steps", type=int, default=2, help="timed steps per profile variant")
    parser.add_argument("--rerun", choices=("profile", "serving"), default=None,
                        help="rerun only this stage on the last run's --work results and rewrite --report (the "
                        "report says which stage was rerun and when)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    if args.rerun:
        return rerun_stage(args.rerun, work, args.report, args.profile_steps)
    families = [scaled(FAMILIES[f], args.scale) for f in args.families.split(",")]
    started = time.perf_counter()
    result = {
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average_start": os.getloadavg(),
        "reps": args.reps,
        "families": {},
    }
    for kind in sorted({f.base for f in families} & {"gpt", "bart"}):
        ensure_base(kind, work)
    for family in families:
        schedule = []
        for rep in range(args.reps):
            schedule += [(rep, c) for c in (family.configs if rep % 2 == 0 else reversed(family.configs))]
        runs = []
        for rep, config in schedule:
            name = f"{family.name}-{config}-r{rep}"
            out = work / "results" / f"{name}.json"
            out.unlink(missing_ok=True)
            wall, rss, code = run_worker(
                [family.name, config, "--work", str(work), "--out", str(out), "--name", name, "--scale",
                 str(args.scale), "--seed", str(rep)], work / "logs" / f"{name}.log")
            run = json.loads(out.read_text()) if code == 0 and out.is_file() else {"error": f"exit {code}"}
            rss = run.get("peak_rss_mb", rss)  # the worker's own figure stops before its MFU probes
            run.update(config=config, rep=rep, process_wall_seconds=wall, peak_rss_mb=rss,
                       load_average=os.getloadavg())
            runs.append(run)
            print(f"[bench] {name}: {run.get('train_seconds', float('nan')):.1f} s training, {wall:.1f} s process, "
                  f"{rss:.0f} MiB, load {os.getloadavg()[0]:.1f}", flush=True)
        result["families"][family.name] = summarize(family, runs)
    if not args.no_evalspeed and "seq2seq" in result["families"]:
        model = work / "runs" / "seq2seq-tuneforge-r0" / "model"
        out = work / "results" / "evalspeed.json"
        wall, rss, code = run_worker(["seq2seq", "evalspeed", "--work", str(work), "--out", str(out), "--model",
                                      str(model), "--scale", str(args.scale)], work / "logs" / "evalspeed.log")
        result["evalspeed"] = json.loads(out.read_text()) if code == 0 else {"error": f"exit {code}"}
        print(f"[bench] evalspeed: {result['evalspeed']}", flush=True)
    if not args.no_profile:
        result["profile"] = run_stage(["bench.profile", "--work", str(work), "--steps", str(args.profile_steps)],
                                      work / "results" / "profile.json", work / "logs" / "profile.log")
    chat_run = work / "runs" / "chat-tuneforge-r0"
    if not args.no_serving and (chat_run / "model").is_dir():
        result["serving"] = run_stage(["bench.serve", "--run", str(chat_run)], work / "results" / "serving.json",
                                      work / "logs" / "serving.log")
    result["load_average_end"] = os.getloadavg()
    result["total_seconds"] = time.perf_counter() - started
    (work / "results.json").write_text(json.dumps(result, indent=1))
    if args.report is not None:
        write_report(result, args.report)
    print(f"[bench] done in {result['total_seconds'] / 60:.1f} min; results in {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
