"""The `tuneforge` command: train, validate, eval, sweep, compare, demo, data, baseline.

User errors (`TuneforgeError`) print one clear message and exit with code 2, without a traceback; so do a full
disk and a read-only folder met anywhere. Any other exception is a bug: one line says so, then its traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from pipelines.errors import TuneforgeError
from pipelines.runtime import is_main_process


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that appends "(default: X)" to every option with a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # Flags (default False) and options without a default say nothing more; the others show it.
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults (`_HelpFormatter`), for the command and every subcommand."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def schema_defaults(section: str) -> str:
    """`key=value` for every field of a recipe section that has a default (from the schema, so never stale)."""
    from pydantic_core import PydanticUndefined

    from pipelines.recipe import Recipe

    fields = Recipe.model_fields[section].annotation.model_fields
    shown = {key: f.get_default(call_default_factory=True) for key, f in fields.items()
             if f.default is not PydanticUndefined or f.default_factory is not None}
    return ", ".join(f"{section}.{key}={value}" for key, value in shown.items())


class _Version(argparse.Action):
    """`--version`: prints `version()` as one line (argparse's own version action rewraps it) and exits 0."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())
        parser.exit()


def version() -> str:
    """`tuneforge --version`: the installed package's version and the libraries runs record."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def of(name: str) -> str:
        try:
            return installed(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {of(name)}" for name in ("torch", "transformers", "peft", "accelerate",
                                                           "datasets"))
    return f"tuneforge {of('tuneforge')} ({libraries})"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tuneforge", description=__doc__.splitlines()[0])
    p.add_argument("--version", action=_Version, help="show tuneforge's and its libraries' versions and exit")
    sub = p.add_subparsers(dest="command", required=True)  # subcommands are _Parser too (argparse's parser_class)

    t = sub.add_parser("train", help="train one recipe (also: accelerate launch ... -m pipelines.train RECIPE)",
                       epilog=f"defaults of the recipe's train section: {schema_defaults('train')}")
    t.add_argument("recipe", help="a recipe YAML, e.g. recipes/gpt/lora-manpages.yaml")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=50")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder")

    v = sub.add_parser("validate", help="schema, files and launch-config checks; trains nothing")
    v.add_argument("recipes", nargs="+", help="recipe files, then optional section.key=value overrides")
    v.add_argument("--launch-config", help="an accelerate config YAML to check the recipe against")

    e = sub.add_parser("eval", help="score a run (or any model with --recipe) on its test split")
    e.add_argument("target", help="a run folder, or a model (Hub id / local dir) with --recipe")
    e.add_argument("--recipe", help="the recipe whose data and metrics to use")
    e.add_argument("--out", help="run-like folder for a model's scores (default: runs/eval-<model>-<recipe>)")
    e.add_argument("overrides", nargs="*")

    b = sub.add_parser("baseline", help="TF-IDF + logistic regression on a classification recipe's data")
    b.add_argument("recipe")
    b.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.test_limit=500")
    b.add_argument("--out", help="the run-like folder to write (default: <output.dir>/<run name>-baseline)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing folder")

    w = sub.add_parser("sweep", help="a grid or a budgeted Optuna search over recipe keys; one run per trial")
    w.add_argument("recipe")
    w.add_argument("overrides", nargs="*", metavar="key=values",
                   help="key=v1,v2,... (a list) or key=lo:hi[:log] (a range); one value: fixed for every trial")
    w.add_argument("--trials", type=_positive_int, help="trials to run (default: the whole grid; 20 for ranges)")
    w.add_argument("--sampler", choices=["grid", "random", "tpe"],
                   help="default: grid when every key lists values, else tpe")
    w.add_argument("--name", help="the sweep's folder under output.dir (default: <run name>-sweep)")
    w.add_argument("--commands", nargs="?", const="accelerate launch --config_file accelerate_config.yaml -m "
                   "pipelines.train", metavar="LAUNCHER",
                   help="print one training command per trial (for a cluster: one job each) and train nothing; "
                   "rerun without it afterwards to collect the table")

    c = sub.add_parser("compare", help="comparison tables across runs")
    c.add_argument("runs_dirs", nargs="*", default=["runs"], help="folders holding run folders")
    c.add_argument("--format", choices=["markdown", "csv", "html"], default="markdown", help="table format")
    c.add_argument("--out", help="write the table here instead of stdout")

    x = sub.add_parser("export", help="a standalone model folder (merged LoRA), verified against the run")
    x.add_argument("run", help="a finished run folder")
    x.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    x.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base (needed for LoRA runs)")
    x.add_argument("--dtype", choices=["bf16", "fp32"], help="weights dtype (default: the base's)")
    x.add_argument("--examples", type=_positive_int, default=8, help="test examples whose logits are compared")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")

    u = sub.add_parser("push", help="upload a run's model folder (with its card) to the Hugging Face Hub")
    u.add_argument("run", help="a finished run folder")
    u.add_argument("repo", help="the Hub repo id, user/name")
    u.add_argument("--private", action="store_true", help="create the repo private")
    u.add_argument("--dry-run", action="store_true", help="list the files that would be sent; send nothing")

    d = sub.add_parser("demo", help="the Gradio app serving every run")
    d.add_argument("runs_dir", nargs="?", default="runs", help="the folder of runs to serve")
    d.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it)")
    d.add_argument("--port", type=int, default=7860, help="port to serve on")
    d.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")

    a = sub.add_parser("data", help="preview / export a built-in dataset")
    a.add_argument("name", help="a built-in source: manpages, manpages-chat, gettext, debian-packages")
    a.add_argument("--limit", type=_positive_int, default=5, help="rows to show or write")
    a.add_argument("--split", default="train", choices=["train", "validation", "test"], help="which split")
    a.add_argument("--lang", default="de", help="gettext: target language")
    a.add_argument("--near-duplicates", default="drop", choices=["drop", "keep"],
                   help="manpages, manpages-chat: drop or keep near-duplicate pages")
    a.add_argument("--out", help="write JSONL here instead of printing")
    return p


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def cmd_train(args) -> int:
    from pipelines import loop
    from pipelines.card import launch_line
    from pipelines.recipe import load_recipe
    from pipelines.tasks import get_task

    recipe = load_recipe(args.recipe, args.overrides)
    run_dir = Path(recipe.output.dir) / recipe.run_name(args.recipe)
    launch = launch_line("tuneforge train " + shlex.join([args.recipe, *args.overrides]))
    metrics = loop.train(recipe, run_dir, overwrite=args.overwrite, launch=launch)
    if metrics.get("status") == "finished" and is_main_process():
        primary = metrics["primary_metric"]
        base = (metrics.get("base_scores") or {}).get(primary)
        shown = f"{primary} {metrics['scores'][primary]:.4g}" + (f" (base {base:.4g})" if base is not None else "")
        t = metrics["train"]
        rate = (f"{t['examples_per_s']:.1f} examples/s" if get_task(recipe.task).throughput_unit == "examples"
                else f"{t['nonpad_tokens_per_s']:.0f} non-padding tokens/s")
        print(f"{run_dir}: {shown}; {t['seconds']:.0f} s, {rate}")
    return 0


def cmd_validate(args) -> int:
    from pipelines.validate import validate_many

    recipes = [r for r in args.recipes if "=" not in r]
    overrides = [r for r in args.recipes if "=" in r]
    return validate_many(recipes, overrides, launch_config=args.launch_config)


def cmd_eval(args) -> int:
    from pipelines.evaluation import eval_main

    return eval_main(args.target, recipe_path=args.recipe, out=args.out, overrides=args.overrides)


def cmd_baseline(args) -> int:
    from pipelines.baseline import run_baseline
    from pipelines.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    out = Path(args.out) if args.out else Path(recipe.output.dir) / f"{recipe.run_name(args.recipe)}-baseline"
    launch = "tuneforge baseline " + shlex.join([args.recipe, *args.overrides])
    metrics = run_baseline(recipe, out, overwrite=args.overwrite, launch=launch)
    s = metrics["scores"]
    print(f"{out}: macro_f1 {s['macro_f1']:.4g}, accuracy {s['accuracy']:.4g}; {metrics['train']['seconds']:.0f} s")
    return 0


def cmd_sweep(args) -> int:
    from pipelines.sweep import plan, run_sweep, trial_commands

    sweep = plan(args.recipe, args.overrides, trials=args.trials, sampler=args.sampler, name=args.name)
    if args.commands:
        print("\n".join(trial_commands(sweep, args.commands)))
        return 0
    rows = run_sweep(sweep, say=print if is_main_process() else lambda _: None)
    return 0 if any(r["state"] == "complete" for r in rows) else TuneforgeError.exit_code


def cmd_compare(args) -> int:
    from eval.compare import compare_main

    text = compare_main([Path(p) for p in args.runs_dirs], fmt=args.format, out=args.out)
    if not args.out:
        print(text)
    return 0


def cmd_export(args) -> int:
    from pipelines.export import export_model

    check = export_model(args.run, args.out, merge=args.merge, dtype=args.dtype, examples=args.examples,
                         overwrite=args.overwrite)
    print(f"{args.out}: verified; logits of {check.examples} test examples within {check.max_abs_diff:.3g} "
          f"(largest |logit| {check.max_abs_logit:.3g}); test {check.metric} {check.export_score:.6g} "
          f"(run {check.run_score:.6g})")
    return 0


def cmd_push(args) -> int:
    from pipelines.push import files_to_push, push_run

    if args.dry_run:
        print("\n".join(files_to_push(args.run)))
        return 0
    print(push_run(args.run, args.repo, private=args.private))
    return 0


def cmd_demo(args) -> int:
    from demo.app import launch

    launch(args.runs_dir, host=args.host, port=args.port, share=args.share)
    return 0


def cmd_data(args) -> int:
    import json

    from pipelines.sources import load_source, source_stats

    ds = load_source(args.name, lang=args.lang, near_duplicates=args.near_duplicates)[args.split]
    stats = source_stats(args.name, lang=args.lang, near_duplicates=args.near_duplicates)
    skipped = "; ".join(f"{n} {reason}" for reason, n in stats["skipped"].items())
    print(f"# {args.name}: read {stats['read']}, kept {stats['kept']}; skipped: {skipped or 'none'}", file=sys.stderr)
    if "near_duplicates" in stats:
        groups = ", ".join(f"{key} x{n}" for key, n in stats["near_duplicates"]["largest_groups"])
        print(f"# near-duplicates dropped: {stats['near_duplicates']['dropped']} (largest groups: {groups}); "
              "--near-duplicates keep keeps them", file=sys.stderr)
    rows = ds.select(range(min(args.limit, len(ds))))
    if args.out:
        rows.to_json(args.out, lines=True, force_ascii=False)
        print(f"wrote {len(rows)} rows of {args.name}/{args.split} to {args.out}")
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        print(f"# {args.name}/{args.split}: {len(ds)} rows", file=sys.stderr)
    return 0


COMMANDS = {"train": cmd_train, "validate": cmd_validate, "eval": cmd_eval, "sweep": cmd_sweep,
            "compare": cmd_compare, "demo": cmd_demo, "data": cmd_data, "export": cmd_export, "push": cmd_push,
            "baseline": cmd_baseline}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tuneforge` console script; returns the exit code."""
    parser = _parser()
    # key=value overrides may come before or after options (`eval RUN --recipe R data.test_limit=50`).
    args, extra = parser.parse_known_args(argv)
    target = "recipes" if args.command == "validate" else "overrides"
    if extra and all("=" in e and not e.startswith("-") for e in extra) and hasattr(args, target):
        getattr(args, target).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except TuneforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from pipelines import failures

        text = failures.message(exc, Path.cwd(), "the output folder")
        if text is not None:  # the machine, not tuneforge: a full disk or a read-only folder met outside a run
            print(f"error: {text}", file=sys.stderr)
            return TuneforgeError.exit_code
        print(f"tuneforge: internal error ({type(exc).__name__}): this is a bug in tuneforge, not in your input; "
              "please report it with the command and the traceback below", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
