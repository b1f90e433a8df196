"""The SmolLM2 sections of docs/benchmarks.md: bf16 vs fp32, the step profile, the loss's memory, serving speed."""

from __future__ import annotations


def bf16_lines(summary: dict) -> list[str]:
    """One paragraph comparing tuneforge under bf16 autocast with tuneforge in fp32 (same family, same runs)."""
    r = summary.get("ratios", {})
    if "bf16_nonpad_tokens_per_s_vs_fp32" not in r:
        return []
    bf16 = summary["configs"]["tuneforge_bf16"]["mean"]
    return ["", f"bf16 autocast vs fp32 (both tuneforge): **{r['bf16_nonpad_tokens_per_s_vs_fp32']:.2f}x** the "
            f"non-padding tokens/s, held-out loss {r['bf16_heldout_loss_diff_vs_fp32']:+.3f} nats, peak RSS "
            f"{r['bf16_peak_rss_vs_fp32']:.2f}x; bf16 MFU {bf16['mfu']:.1%} of a bf16 matmul timed in the same run "
            f"({bf16['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s)."]


def ceiling_lines(summary: dict) -> list[str]:
    """What MFU the family's model shapes allow (`bench.ceiling`), next to the MFU tuneforge reached; one paragraph
    per configuration measured (fp32, and bf16 autocast against a bf16 matmul)."""
    from bench.report import LABELS

    lines = []
    work = summary["work"]
    matmuls = "frozen: forward and input gradient; LoRA A, B: all three" if work.get("lora") else \
        "forward and both gradients"
    for config, c in summary.get("shape_ceilings", {}).items():
        tf = summary["configs"].get(config, {}).get("mean")
        if not tf:
            continue
        step_flops = tf["model_flops"] / work["steps"]
        rate = tf["matmul_flops_per_s"]
        ceiling = step_flops / (c["matmul_seconds"] + c["attention_seconds"]) / rate
        precision = "bf16" if c.get("dtype") == "bfloat16" else "fp32"
        lines += ["", f"MFU ceiling of this model's shapes in {precision} (`bench/ceiling.py`, timed in the "
                  f"{LABELS.get(config, config)} process): its weight matmuls alone ({matmuls}, "
                  f"{work['global_batch']} x {work['max_length']} tokens) run at "
                  f"{c['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s, **{c['matmul_flops_per_s'] / rate:.0%}** of the "
                  f"large {precision} matmul rate ({rate / 1e9:.0f} GFLOP/s), and {c['layers']} layers of causal "
                  f"attention ({c['heads']} heads of {c['head_dim']}) forward and backward take "
                  f"{c['attention_seconds'] * 1e3:.0f} ms per step: a step whose every other operator took no time "
                  f"would reach **{ceiling:.1%}** MFU; its steps reach {tf['mfu']:.1%} ({tf['mfu'] / ceiling:.0%} "
                  f"of that ceiling)."]
    return lines


def profile_lines(profile: dict | None) -> list[str]:
    """The profile section: variants (step time, tokens/s, peak RSS) and the top operators of the fp32 step."""
    if not profile:
        return []
    variants = profile["variants"]
    lines = ["### Profile of one SmolLM2 LoRA chat step (`bench/profile.py`)", "",
             f"tuneforge's step code on the chat family's data ({profile.get('batch', 8)} packed 256-token windows "
             f"per step), one warm-up step, then the median of {profile['steps']} timed steps; each variant in its "
             "own process.", "",
             "| variant | s / step | non-padding tokens/s | peak RSS MiB |", "|---|---:|---:|---:|"]
    labels = {"fp32": "fp32, SDPA, chunked loss (as trained)", "fp32_eager": "fp32, eager attention",
              "bf16": "bf16 autocast", "fp32_plain_loss": "fp32, plain loss (all logits at once)",
              "fp32_lora_dropout": "fp32, LoRA dropout 0.05"}
    for name, v in variants.items():
        if "error" in v:
            lines.append(f"| {labels.get(name, name)} | failed: {v['error']} | | |")
            continue
        lines.append(f"| {labels.get(name, name)} | {v['step_seconds']:.2f} | {v['nonpad_tokens_per_s']:.0f} "
                     f"| {v['peak_rss_mb']:.0f} |")
    fp32, plain, eager = (variants.get(k, {}) for k in ("fp32", "fp32_plain_loss", "fp32_eager"))
    if "peak_rss_mb" in fp32 and "peak_rss_mb" in plain:
        drop = plain["peak_rss_mb"] - fp32["peak_rss_mb"]
        lines += ["", f"Chunked loss: peak RSS {fp32['peak_rss_mb']:.0f} MiB vs {plain['peak_rss_mb']:.0f} MiB with "
                  f"all logits at once (**{abs(drop):.0f} MiB {'less' if drop >= 0 else 'more'}, "
                  f"{abs(drop) / plain['peak_rss_mb']:.0%}**), step time "
                  f"{fp32['step_seconds'] / plain['step_seconds']:.2f}x the plain one. One process's peak RSS "
                  "varies run to run with where glibc's heap grows and trims (docs/smollm2.md), so one pair "
                  "compares only roughly."]
    if "step_seconds" in fp32 and "step_seconds" in eager:
        lines += ["", f"Attention: SDPA {fp32['step_seconds']:.2f} s vs eager {eager['step_seconds']:.2f} s per step "
                  f"({eager['step_seconds'] / fp32['step_seconds']:.2f}x)."]
    dropout = variants.get("fp32_lora_dropout", {})
    if "step_seconds" in fp32 and "step_seconds" in dropout:
        lines += ["", f"LoRA dropout: 0.05 costs {dropout['step_seconds']:.2f} s vs {fp32['step_seconds']:.2f} s "
                  f"per step without (**{dropout['step_seconds'] / fp32['step_seconds']:.2f}x**), peak RSS "
                  f"{dropout['peak_rss_mb']:.0f} vs {fp32['peak_rss_mb']:.0f} MiB (a fresh mask per adapted layer's "
                  "input, drawn on one thread, kept for the backward); the chat recipe and the family train with 0."]
    for name in ("fp32", "bf16"):
        table = variants.get(name, {}).get("top_operators")
        if not table:
            continue
        lines += ["", f"Top operators by self CPU time, {labels[name]} (one profiled step):", "",
                  "| operator | calls | self ms | total ms | share of self time |", "|---|---:|---:|---:|---:|"]
        lines += [f"| `{op['name']}` | {op['calls']} | {op['self_ms']:.0f} | {op['total_ms']:.0f} "
                  f"| {op['self_share']:.1%} |" for op in table]
    return lines + [""]


def serving_lines(serving: dict | None) -> list[str]:
    """The serving section: time to first token and tokens/s for 1 and 4 users, per dtype."""
    if not serving:
        return []
    if "error" in serving:
        return ["### Chat serving on SmolLM2 (`bench/serve.py`)", "", f"failed: {serving['error']}", ""]
    lines = ["### Chat serving on SmolLM2 (`bench/serve.py`)", "",
             f"The demo's chat path in process on the tuneforge chat run: a {serving['prompt_tokens']}-token prompt, "
             f"greedy, up to {serving['max_new_tokens']} new tokens, KV cache "
             f"{'on' if serving['kv_cache'] else 'OFF'}, {serving['threads']} threads. Fastest dtype here: "
             f"**{serving['fastest']}**.", "",
             "| dtype | 1 user: first token s | 1 user: tokens/s | 4 users: first token s (mean / max) "
             "| 4 users: tokens/s per user | 4 users: tokens/s total |", "|---|---:|---:|---:|---:|---:|"]
    for name, d in serving["dtypes"].items():
        one, many = d["one_user"], d["concurrent"]
        lines.append(f"| {name} | {one['ttft_s']:.2f} | {one['tokens_per_s']:.1f} | {many['ttft_mean_s']:.2f} / "
                     f"{many['ttft_max_s']:.2f} | {many['per_user_tokens_per_s']:.1f} "
                     f"| {many['total_tokens_per_s']:.1f} |")
    web = serving.get("browser")
    if web and "error" in web:
        lines += ["", f"In the browser: failed ({web['error']})."]
    elif web:
        one, many = web["one_user"], web["concurrent"]
        each = ", ".join(f"{r['tokens_per_s']:.2f}" for r in one["requests"])
        lines += ["", "In the browser (`bench/serve_browser.py`: the demo's Gradio server and its Chat tab in "
                  "headless Chromium, the same message, greedy, the model as the demo keeps it; times by the page's "
                  "clock from the click on Send to the first and the last word on screen): 1 user (their page the "
                  f"only one open) **{one['ttft_s']:.2f} s** to the first token, **{one['tokens_per_s']:.1f} "
                  f"tokens/s** streamed (median of {each}); {many['users']} users "
                  "clicking Send together: first token "
                  f"{many['ttft_mean_s']:.2f} s mean / {many['ttft_max_s']:.2f} s max, "
                  f"{many['per_user_tokens_per_s']:.1f} tokens/s per user while answered (the demo answers one "
                  f"request per model at a time, so later users queue). Loading the model on the first request "
                  f"and answering it: {web['load_and_first_answer_s']:.1f} s."]
    return lines + [""]


def serving_targets(serving: dict | None) -> list[tuple[str, float | None, float, bool]]:
    """Issue 21's serving targets on the fastest dtype: (name, value, threshold, higher is better)."""
    if not serving or "fastest" not in serving:
        return []
    one = serving["dtypes"][serving["fastest"]]["one_user"]
    return [(f"chat serving: time to first token, 1 user, {serving['fastest']} (s)", one["ttft_s"], 1.5, False),
            (f"chat serving: streamed tokens/s, 1 user, {serving['fastest']}", one["tokens_per_s"], 15.0, True)] + (
        [("chat serving in the browser: time to first token, 1 user (s)", web["one_user"]["ttft_s"], 1.5, False),
         ("chat serving in the browser: streamed tokens/s, 1 user", web["one_user"]["tokens_per_s"], 15.0, True)]
        if (web := serving.get("browser")) and "error" not in web else [])
