"""What the Inspect tab computes, per view, over the demo session's runs and model cache (see `demo.inspect_tab`).

The computations are `pipelines.introspect`'s and the drawing `demo.inspect_draw`'s; this module picks the model
(the run or its base: a LoRA run with its adapters switched off), holds its lock, caches what is slow to redo, and
turns bad input into messages (`shown_in_ui`).
"""

from __future__ import annotations

import contextlib
import html
import logging
import math
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future

import gradio as gr
import numpy as np

from demo import compute
from demo.inspect_draw import (
    MAX_TABLE_TOKENS,
    NO_LOSS,
    attention_figure,
    bars_figure,
    chip,
    no_loss_as_none,
    positions_figure,
    shift_table,
    token_table_html,
)
from demo.models import LoadedModel, base_is_adapters_off, run_version
from demo.session import Session, shown_in_ui
from pipelines import introspect
from pipelines.errors import TuneforgeError

log = logging.getLogger(__name__)

MAX_ATTENTION_TOKENS = 48  # per axis: more token labels than this no longer read on a heatmap
MAX_WINDOWS = 3  # windows drawn per passage (the count covers all)
MAX_K = 50
MAX_STEPS = 20
POSITION_PICTURES = 16  # positions views kept drawn
ROTARY_POSITIONS = 512  # distances shown for a rotary model (its context can be 8k tokens)
DEFAULT_TEXT = "ls lists the files in a directory, sorted by name."
WHICH = [("Run (as trained)", "run"), ("Its base model (LoRA: adapters off)", "base")]
ATTENTION_KINDS = {
    introspect.DECODER: ["self"],
    introspect.ENCODER: ["self"],
    introspect.ENCODER_DECODER: ["encoder", "decoder", "cross"],
}
WEAK_STRUCTURE = (
    "Small models trained from scratch on little text show weak structure: neighbours share spelling or position "
    "in the training text more often than meaning, and a − b + c rarely lands on the textbook answer "
    "(king − man + woman ≈ queen needs billions of words, Mikolov et al. 2013). Byte-level BPE tells ` cat` "
    "(inside a sentence, with its space) from `cat`."
)


# -- handlers -------------------------------------------------------------------------------------------------------


def _index_slider(count: int) -> dict:
    """A layer/head slider over 0..count-1. Gradio refuses a slider whose minimum equals its maximum (ValueError),
    so a model with one layer or one head gets 0..1, locked at 0."""
    return gr.update(maximum=max(count - 1, 1), value=0, interactive=count > 1)


class Inspector:
    """What the Inspect tab does, over the app's runs and model cache.

    Args:
        h: the demo's session (registry, input limit, the plot lock).
    """

    def __init__(self, h: Session):
        self.h = h
        self._lock = threading.Lock()  # guards the caches below
        self._test_rows: dict[tuple[str, int], Future] = {}  # (run key, version) -> its data's test split
        # (run key, version, run/base) -> the positions view: drawing it takes about a second, and it only
        # changes when the run does. Bounded: a picture is ~1.5 MB.
        self._position_views: OrderedDict[tuple, tuple[np.ndarray, str]] = OrderedDict()
        self._drawing: dict[tuple, threading.Lock] = {}  # one drawer per picture

    @contextlib.contextmanager
    def _model(self, run: str, which: str):
        """The run's model (or its base) with its lock held; a LoRA base runs with the adapters switched off."""
        loaded = self.h.model(run, "inspect")  # says "Loading ..." on first use
        adapter_off = False
        if which == "base":
            loaded, adapter_off = self.h.registry.base(run)
        with loaded.lock, (loaded.model.disable_adapter() if adapter_off else contextlib.nullcontext()):
            yield loaded

    def _draw(self, fn, *args) -> np.ndarray:
        with self.h.plot_lock:  # matplotlib's font and text caches are shared with the leaderboard's pyplot
            return fn(*args)

    # 1. tokenization

    @shown_in_ui
    @compute.on_compute
    def tokens(self, run: str, which: str, text: str) -> tuple[str, str]:
        """Tokens with ids and character spans (HTML), and the vocabulary / context-window summary (markdown)."""
        text = self.h.text(text, "text")
        with self._model(run, which) as loaded:
            tok = loaded.tokenizer
            tokens = introspect.model_tokens(loaded.model, tok, text)
            shown = [introspect.token_text(tok, t.id) for t in tokens[:MAX_TABLE_TOKENS]]
            summary = introspect.vocabulary_summary(tok, loaded.model)
            kind = introspect.family(loaded.model)
        window = summary["context_window"]
        count = f"**{len(tokens):,} tokens** from {len(text):,} characters"
        if window:
            count += f" — {len(tokens) / window:.0%} of the model's **{window:,}-token context window**"
            if len(tokens) > window:
                count += " (over it: the model reads at most that many; the generator keeps the most recent)"
        specials = ", ".join(f"`{name}` = `{value}`" for name, value in summary["special_tokens"].items())
        ids = ", ".join(f"`{token}` {i}" for token, i in summary["special_ids"].items())
        how = {introspect.DECODER: "BOS first, as training and the generator feed a decoder-only model",
               introspect.ENCODER_DECODER: "with the tokenizer's special tokens, as the encoder reads a source",
               introspect.ENCODER: "with the tokenizer's special tokens, as the classifier reads a text"}  # fmt: skip
        md = (f"{count}; tokenized {how[kind]}.\n\n**Vocabulary:** {summary['vocab_size']:,} tokens. "
              f"**Special tokens:** {specials} (ids: {ids}).")  # fmt: skip
        return token_table_html(text, tokens, shown), md

    @shown_in_ui
    @compute.on_compute
    def ids_to_text(self, run: str, which: str, ids: str) -> str:
        """Token ids (separated by spaces or commas) -> text, special tokens kept."""
        if not ids or not ids.strip():
            raise TuneforgeError("ids: empty; type token ids such as 0, 1183, 264")
        if len(ids) > self.h.max_input_chars:
            raise TuneforgeError(f"ids: over this demo's limit of {self.h.max_input_chars:,} characters")
        parts = [p for p in re.split(r"[\s,\[\]]+", ids) if p]
        if not all(p.isdigit() for p in parts):
            raise TuneforgeError(f"ids: {ids[:40]!r} is not a list of token ids; type numbers such as 0, 1183, 264")
        with self._model(run, which) as loaded:
            return introspect.detokenize(loaded.tokenizer, [int(p) for p in parts])

    # 2. embeddings

    @shown_in_ui
    @compute.on_compute
    def embeddings(self, run: str, which: str, word: str, a: str, b: str, c: str, k: int):
        """Nearest neighbours of `word` and the analogy a - b + c, by cosine in the input embedding matrix."""
        word = self.h.text(word, "word")
        k = int(k)
        analogy_words = [w for w in (a, b, c) if w and w.strip()]
        if analogy_words and len(analogy_words) != 3:
            raise TuneforgeError("analogy: give all three words a, b and c (or none)")
        with self._model(run, which) as loaded:
            tok, model = loaded.tokenizer, loaded.model
            near = introspect.neighbours(model, tok, word, k)
            _, word_ids = introspect.word_vector(model, tok, word)
            table = [[r + 1, introspect.token_text(tok, i), i, round(cos, 4)] for r, (_, i, cos) in enumerate(near)]
            arith = []
            if analogy_words:
                found = introspect.analogy(model, tok, *[self.h.text(w, "analogy word") for w in analogy_words], k)
                arith = [[r + 1, introspect.token_text(tok, i), i, round(cos, 4)]
                         for r, (_, i, cos) in enumerate(found)]  # fmt: skip
            pieces = " ".join(f"`{introspect.token_text(tok, i)}` ({i})" for i in word_ids)
            size = tuple(model.get_input_embeddings().weight.shape)
        md = (f"`{word}` is {len(word_ids)} token(s): {pieces}"
              f"{' — their mean vector is used' if len(word_ids) > 1 else ''}. Input embedding matrix: "
              f"{size[0]:,} × {size[1]} (vocabulary × hidden size).\n\n> {WEAK_STRUCTURE}")  # fmt: skip
        return table, arith, md

    # 3. positions

    @shown_in_ui
    def positions(self, run: str, which: str) -> tuple[np.ndarray, str]:
        """Learned position embeddings beside the sinusoidal encoding of the same size, and their similarities."""
        return self._positions(run, which)

    @compute.on_compute
    def _positions(self, run: str, which: str) -> tuple[np.ndarray, str]:
        key = (run, run_version(self.h.registry.run(run)), which)
        with self._lock:
            drawing = self._drawing.setdefault(key, threading.Lock())
        with drawing:  # a request that comes while the picture is drawn ahead waits for it instead of redrawing
            with self._lock:
                if key in self._position_views:
                    self._position_views.move_to_end(key)
                    return self._position_views[key]
            with self._model(run, which) as loaded:
                learned = introspect.learned_positions(loaded.model)
                d = loaded.model.get_input_embeddings().embedding_dim
                p = learned.shape[0] if learned is not None else introspect.context_window(loaded.model) or 512
                kind = introspect.family(loaded.model)
                frequencies = introspect.rotary_frequencies(loaded.model)
            rotary = None
            if learned is None and frequencies is not None:
                p = min(p, ROTARY_POSITIONS)  # the sinusoid beside it: a rotary context (8k) would blur to grey
                rotary = (frequencies.numpy(), introspect.rotary_distance_score(frequencies, p).numpy())
            sinusoid = introspect.sinusoidal_positions(p, d)
            learned_np = learned.numpy() if learned is not None else None
            learned_sim = introspect.position_similarity(learned).numpy() if learned is not None else None
            image = self._draw(positions_figure, learned_np, sinusoid.numpy(),
                               learned_sim, introspect.position_similarity(sinusoid).numpy(), rotary)  # fmt: skip
            encoder_decoder = kind == introspect.ENCODER_DECODER
            which_table = " (the encoder's table; BART's decoder has its own)" if encoder_decoder else ""
            md = (f"{p} positions × {d} dimensions{which_table}. The model adds row *p* of its position table to the "
                  "embedding of the token at position *p*. Left: what training learned; right: the fixed sinusoids "
                  "of *Attention Is All You Need* (§3.5) for the same size, where nearby positions are similar and "
                  "the similarity falls off smoothly with distance.")  # fmt: skip
            if rotary is not None:
                md = rotary_note(frequencies, p) + md
            elif learned is None:
                md = "This model has no learned position table (it encodes positions another way, e.g. rotary). " + md
            with self._lock:
                self._position_views[key] = (image, md)
                while len(self._position_views) > POSITION_PICTURES:
                    self._position_views.popitem(last=False)
            return image, md

    # 4. attention

    @shown_in_ui
    @compute.on_compute
    def attention(self, run: str, which: str, text: str, target: str | None, kind: str, layer: int, head: int,
                  average: bool) -> tuple[np.ndarray, str]:  # fmt: skip
        """One layer's attention weights (one head or their mean) as a query x key heatmap."""
        text = self.h.text(text, "text")
        target = self.h.text(target, "target") if target and target.strip() else None
        with self._model(run, which) as loaded:
            family = introspect.family(loaded.model)
            att = introspect.attention(loaded.model, loaded.tokenizer, text, target, max_tokens=MAX_ATTENTION_TOKENS)
            full = len(introspect.model_tokens(loaded.model, loaded.tokenizer, text))
            readable = [introspect.token_text(loaded.tokenizer, loaded.tokenizer.convert_tokens_to_ids(t))
                        for t in att.tokens]  # fmt: skip
            readable_dec = [introspect.token_text(loaded.tokenizer, loaded.tokenizer.convert_tokens_to_ids(t))
                            for t in att.target_tokens or []]  # fmt: skip
        if kind not in att.maps:
            kind = ATTENTION_KINDS[family][0]
            gr.Warning(f"attention: this {family} model has {', '.join(att.maps)} attention; showing {kind}")
        maps = att.maps[kind]
        layers, heads = maps.shape[:2]
        layer, head = int(layer), int(head)
        if not 0 <= layer < layers:
            raise TuneforgeError(f"layer: {layer} is out of range; this model has {layers} layers (0–{layers - 1})")
        if not average and not 0 <= head < heads:
            raise TuneforgeError(f"head: {head} is out of range; this model has {heads} heads (0–{heads - 1})")
        weights = maps[layer].mean(0) if average else maps[layer, head]
        queries = readable_dec if kind in ("decoder", "cross") else readable
        keys = readable_dec if kind == "decoder" else readable
        who = f"mean of {heads} heads" if average else f"head {head} of {heads}"
        causal = kind in att.causal
        image = self._draw(attention_figure, weights.numpy(), queries, keys,
                           f"{kind} attention, layer {layer} of {layers}, {who}", causal)  # fmt: skip
        notes = [f"Rows: the {len(queries)} query tokens; columns: the {len(keys)} key tokens; each row is a "
                 "softmax and sums to 1."]  # fmt: skip
        if causal:
            notes.append("Grey cells are masked: a decoder position never sees the tokens after it (causal mask).")
        if kind == "cross":
            notes.append("Cross-attention: each decoder position (teacher-forced target) reads the encoder's tokens.")
        if family == introspect.ENCODER_DECODER:
            notes.append("The decoder reads the target (default: the text itself, as denoising reconstructs it) "
                         "behind its start token.")  # fmt: skip
        if full > len(att.tokens):
            notes.append(f"The input has {full} tokens; the first {len(att.tokens)} are shown.")
        return image, " ".join(notes)

    # 5. next-token probabilities (class probabilities for classifiers)

    @shown_in_ui
    @compute.on_compute
    def next_token(self, run: str, which: str, text: str, target: str | None, temperature: float, k: int,
                   steps: int) -> tuple[np.ndarray, str, str]:  # fmt: skip
        """Top-k next tokens at a temperature and a greedy continuation step by step; classifiers: classes."""
        text = self.h.text(text, "text")
        target = self.h.text(target, "target") if target and target.strip() else None
        k, steps, temperature = int(k), int(steps), float(temperature)
        if not 1 <= k <= MAX_K or not 1 <= steps <= MAX_STEPS:
            raise TuneforgeError(f"k and steps: between 1 and {MAX_K} / {MAX_STEPS} (got {k}, {steps})")
        with self._model(run, which) as loaded:
            if loaded.task.demo_feed == "classify":
                return self._classes(loaded, text, target)
            tok = loaded.tokenizer
            # Step 1's candidates are the top-k after the prompt (one forward pass serves both).
            walk = introspect.greedy_steps(loaded.model, tok, text, steps, k, temperature, target_prefix=target)
            top = walk[0]["top"]
            labels = [introspect.token_text(tok, c.id) for c in top]
            rows = []
            for i, step in enumerate(walk):
                cands = " ".join(chip(f"{introspect.token_text(tok, c.id)} {c.probability:.3f}",
                                      "#bfdbfe" if j == 0 else "#f3f4f6") for j, c in enumerate(step["top"][:5]))
                rows.append(f"<tr><td>{i + 1}</td><td style='white-space:pre-wrap'>{html.escape(step['continuation'])}"
                            f"</td><td>{chip(introspect.token_text(tok, step['chosen_id']), '#bbf7d0')}</td>"
                            f"<td>{cands}</td></tr>")  # fmt: skip
        image = self._draw(bars_figure, labels, [c.probability for c in top],
                           f"top-{k} next tokens at temperature {temperature:g}", "probability")  # fmt: skip
        table = ('<table id="inspect-steps"><thead><tr><th>step</th><th>continuation so far</th><th>greedy choice</th>'
                 f"<th>top-{min(k, 5)} (probability)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
        mass = sum(c.probability for c in top)
        md = (f"p = softmax(logits / T) over {len(tok):,} tokens; the top {k} hold {mass:.1%} of the probability. "
              "Lower T sharpens the distribution, higher T flattens it; the greedy choice (argmax) is the same at "
              "any T.")  # fmt: skip
        if introspect.family(loaded.model) == introspect.ENCODER_DECODER:
            md += (" Encoder-decoder: the text is the source; the decoder predicts the target's next token after "
                   "the target so far (the Target box; empty = its first token).")  # fmt: skip
        return image, table, md

    def _classes(self, loaded: LoadedModel, text: str, pair: str | None) -> tuple[np.ndarray, str, str]:
        takes_pairs = "text_pair" in loaded.recipe.data.columns
        if pair and not takes_pairs:
            gr.Warning(f"{loaded.key} classifies single texts; the second text is ignored")
        rows = introspect.class_probabilities(loaded.model, loaded.tokenizer, text, pair if takes_pairs else None)
        image = self._draw(bars_figure, [r[0] for r in rows[:MAX_K]], [r[1] for r in rows[:MAX_K]],
                           "class probabilities", "probability")  # fmt: skip
        body = "".join(f"<tr><td>{html.escape(label)}</td><td>{p:.4f}</td><td>{logit:+.3f}</td></tr>"
                       for label, p, logit in rows)  # fmt: skip
        table = ('<table id="inspect-classes"><thead><tr><th>class</th><th>probability</th><th>logit</th></tr>'
                 f"</thead><tbody>{body}</tbody></table>")  # fmt: skip
        md = (f"A classifier predicts no next token: its head maps the text to {len(rows)} logits, and "
              "p = softmax(logits) (temperature and steps do not apply). The first class is the run's prediction.")
        if takes_pairs:
            md += " This run reads text pairs: the Target / second text box is the second text."
        return image, table, md

    # 6. pretraining windows

    def _test_split(self, key: str):
        """The run's test split, loaded once per run version in a background thread (data loading takes seconds)."""
        from pipelines.data import load_data
        from pipelines.tasks import get_task

        cache_key = (key, run_version(self.h.registry.run(key)))
        recipe = self.h.model(key, "inspect").recipe  # (loads the model on first use: not under the cache lock)
        with self._lock:
            future = self._test_rows.get(cache_key)
            if future is None or (future.done() and future.exception() is not None):
                future = Future()
                self._test_rows[cache_key] = future

                def load() -> None:
                    try:
                        future.set_result(load_data(recipe.data, get_task(recipe.task).stratify_role)["test"])
                    except BaseException as exc:  # shown to the request that waits on it
                        future.set_exception(exc)

                threading.Thread(target=load, name=f"inspect-data-{key}", daemon=True).start()
        return future

    @shown_in_ui
    @compute.on_compute
    def windows(self, run: str, which: str, row: int) -> tuple[str, str]:
        """A real passage of the run's test data cut into the windows its training reads, the label shift visible."""
        loaded = self.h.model(run, "inspect")
        recipe = loaded.recipe
        if not loaded.task.trains_on_windows:
            return "", not_pretraining(loaded)
        test = self._test_split(run).result()
        row = int(row)
        if not 0 <= row < len(test):
            raise TuneforgeError(f"row: {row} is out of range; the test split has {len(test)} rows "
                                 f"(0–{len(test) - 1})")  # fmt: skip
        prompt, text = passage(recipe, test[row])
        with self._model(run, which) as loaded:
            tok = loaded.tokenizer
            if getattr(loaded.model.config, "is_encoder_decoder", False):  # denoising: corrupted source windows
                found = introspect.denoising_windows(loaded.model, tok, text, recipe.data.max_length)
                parts = [shift_table([("encoder input (corrupted)", w["source_ids"])], tok)
                         + shift_table([("decoder input", w["decoder_input_ids"]),
                                        ("label (next token)", w["label_ids"])], tok)
                         for w in found[:MAX_WINDOWS]]  # fmt: skip
                how = (f"BART text infilling: the text is cut into pieces of {recipe.data.max_length - 2} tokens "
                       "between `<s>` and `</s>`; about 30% of each piece's tokens are masked in Poisson(3)-long "
                       "spans, each span one red `<mask>` (the test split's fixed noise). The encoder reads the "
                       "corrupted piece; the decoder reads the original shifted right behind its start token and "
                       "predicts the label in each column — the same colours, one column to the left.")  # fmt: skip
            elif recipe.data.packing:
                found = introspect.pretraining_windows(tok, text, recipe.data.max_length)
                parts = [shift_table([("input", w["input_ids"]), ("label (next token)", w["label_ids"])], tok)
                         for w in found[:MAX_WINDOWS]]
                how = (f"Causal-LM pretraining: documents are joined with `{tok.eos_token}` and cut into windows of "
                       f"{recipe.data.max_length} tokens (the last, shorter one is dropped in training). Position *t* "
                       "predicts token *t + 1*: the label row is the input row moved one column to the left.")
            else:
                found = [introspect.finetuning_example(tok, prompt, text, recipe.data.max_length)]
                parts = [shift_table([("input", w["input_ids"]),
                                      ("label (next token)", no_loss_as_none(w["label_ids"]))], tok)
                         for w in found]
                how = ("Finetuning on one example per row, `[BOS] prompt ↵ text EOS` (no prompt: `[BOS] text EOS`) up "
                       f"to {recipe.data.max_length} tokens; BOS and the prompt have label −100 (no loss, shown as "
                       f"{NO_LOSS}), the text's labels are its next tokens: the label row is the input row moved one "
                       "column left.")  # fmt: skip
        shown = min(len(found), MAX_WINDOWS)
        header = (f"Test row {row} of `{recipe.data.source}`: {len(text):,} characters → {len(found)} "
                  f"window(s), {shown} shown.")  # fmt: skip
        blocks = "".join(f"<h4>window {i}</h4>{part}" for i, part in enumerate(parts))
        return f'<div id="inspect-windows">{blocks}</div>', f"{header}\n\n{how}"

    # run changes

    def controls(self, run: str | None):
        """Attention kinds and layer/head ranges of the selected run; starts loading its test data and drawing its
        positions view in the background (both take seconds on a loaded CPU and only change with the run)."""
        if not run:
            return gr.update(), gr.update(), gr.update()
        try:
            loaded = self.h.model(run, "inspect")
        except (TuneforgeError, gr.Error):
            return gr.update(), gr.update(), gr.update()
        config = introspect.base_model(loaded.model).config
        kinds = ATTENTION_KINDS[introspect.family(loaded.model)]
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 1)
        heads = (getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
                 or getattr(config, "encoder_attention_heads", 1))  # fmt: skip
        if loaded.task.trains_on_windows:
            self._test_split(run)  # prefetch: the windows view is then instant
        threading.Thread(target=self._draw_ahead, args=(run,), name=f"inspect-positions-{run}", daemon=True).start()
        return gr.update(choices=kinds, value=kinds[0]), _index_slider(layers), _index_slider(heads)


    def _draw_ahead(self, run: str) -> None:
        """Draw the positions view of the run (and of its base when that is the same loaded model, a LoRA run's) in
        advance: a second of matplotlib work each that only changes with the run. Never loads a model."""
        same_model = base_is_adapters_off(self.h.registry.finetuned(run).model)
        for which in ("run", "base") if same_model else ("run",):
            try:
                self._positions(run, which)
            except Exception:  # the same error reaches the user when they ask for the view
                log.debug("drawing the positions of %s (%s) ahead failed", run, which, exc_info=True)


def rotary_note(frequencies, shown: int) -> str:
    """What the rotary view (left column) shows, for a model with `frequencies` [d_head / 2] (radians per token)."""
    fastest, slowest = 2 * math.pi / float(frequencies.max()), 2 * math.pi / float(frequencies.min())
    return (f"**Rotary positions (RoPE, Su et al. 2021).** This model has no position table: every attention layer "
            f"rotates each of the {len(frequencies)} dimension pairs of its queries and keys by position × θ_i, so a "
            "query·key score depends only on how far apart the two tokens are. Top left: each pair's wavelength, "
            f"from {fastest:.1f} to {slowest:,.0f} tokens per turn (θ_i = rope_theta^(-2i/head_dim)). Bottom left: "
            f"the score of a vector with itself at distance 0-{shown} (mean cos over the pairs): near tokens score "
            "high, far ones lower. Right, for comparison: sinusoids added to the input as in the original "
            "Transformer, at the same width. ")


def passage(recipe, row: dict) -> tuple[str | None, str]:
    """(prompt or None, text) of one data row, by the recipe's column roles (a `mix` gives a `text` column)."""
    if recipe.data.mix:
        return None, row["text"]
    cols = recipe.data.columns["text"]
    cols = [cols] if isinstance(cols, str) else cols
    text = next((row[c] for c in cols if row[c] and str(row[c]).strip()), "")
    prompt = row[recipe.data.columns["prompt"]] if "prompt" in recipe.data.columns else None
    if not text:
        raise TuneforgeError("row: this test row has no text; pick another row")
    return prompt, text


def not_pretraining(loaded: LoadedModel) -> str:
    """Why the windows view does not apply to this run."""
    recipe = loaded.recipe
    if loaded.task.demo_feed == "classify":
        return (f"Does not apply: a classifier reads one text (or pair) per example, truncated to "
                f"data.max_length = {recipe.data.max_length} tokens, with no next-token labels. Its base "
                f"(`{recipe.model.base}`) was pretrained by its authors, not by a recipe here.")
    return (f"Does not apply: this {recipe.task} run trains on whole examples, not on pretraining windows. Its base "
            f"(`{recipe.model.base}`) has them: pick that run if it is in this folder.")
