"""Forgetting: general-English perplexity before and after finetuning (eval.forgetting), and its compare column."""

import csv
import math

import pytest
import torch

from eval.compare import build_tables, collect_runs, render_csv, render_html, render_markdown
from eval.forgetting import SCORE_KEY, TextSlice, general_perplexity, general_slice, windows
from pipelines.tasks import causal_lm
from tests.conftest import tiny_lora_raw
from tests.test_compare import write_run

pytestmark = pytest.mark.usefixtures("one_thread")


def test_windows_cover_every_token_once_after_one_bos():
    ids = list(range(10, 20))
    cut = windows(ids, bos_id=1, width=4)
    assert cut == [[1, 10, 11, 12], [1, 13, 14, 15], [1, 16, 17, 18], [1, 19]]
    assert windows(ids, bos_id=None, width=4) == [ids[0:4], ids[4:8], ids[8:10]]


def test_slice_is_fixed_and_fingerprinted(tmp_path):
    source = tmp_path / "text.txt"
    source.write_text("first line\nsecond line\nthird line\n")
    piece = general_slice(source, chars=12)  # cut at the end of the line holding character 12
    assert piece.text == "first line\nsecond line\n"
    assert len(piece.sha256) == 64 and piece.source == str(source)
    assert general_slice(tmp_path / "absent.txt") is None


class _Unigram(torch.nn.Module):
    """A 'language model' that predicts a fixed distribution at every position: its perplexity is known."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(probs.log())
        self.config = type("Config", (), {"n_positions": 8})()

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return type("Out", (), {"logits": self.logits.expand(*input_ids.shape, -1)})()


class _CharTokenizer:
    bos_token_id = 0

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [1 + (ord(c) % 3) for c in text]}


def test_perplexity_matches_a_hand_computed_value_and_ignores_batch_size():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    text = TextSlice("abcabcabcaa" * 3, "test", "0" * 64)
    ids = _CharTokenizer()(text.text)["input_ids"]
    expected = math.exp(-sum(math.log(probs[i]) for i in ids) / len(ids))  # every token scored once
    scores, settings = general_perplexity(_Unigram(probs), _CharTokenizer(), causal_lm.loss, "cpu", 2, text)
    assert scores[SCORE_KEY] == pytest.approx(expected, rel=1e-6)
    assert settings[SCORE_KEY]["tokens"] == len(ids) and settings[SCORE_KEY]["window"] == 8
    again, _ = general_perplexity(_Unigram(probs), _CharTokenizer(), causal_lm.loss, "cpu", 7, text)
    assert again[SCORE_KEY] == pytest.approx(scores[SCORE_KEY], rel=1e-9)


@pytest.mark.skipif(general_slice() is None, reason="this host has no /usr/share/common-licenses/GPL-3")
def test_a_lora_run_records_general_perplexity_before_and_after(tmp_path, corpus, pretrained):
    from pipelines import loop
    from pipelines.recipe import build_recipe

    recipe = build_recipe(tiny_lora_raw(corpus, tmp_path, pretrained, "gpt-lora", max_steps=6))
    metrics = loop.train(recipe, tmp_path / "gpt-lora")
    before, after = metrics["base_scores"][SCORE_KEY], metrics["scores"][SCORE_KEY]
    assert math.isfinite(before) and math.isfinite(after) and before != after  # training moved it
    setting = metrics["metric_settings"][SCORE_KEY]
    assert setting["sha256"] == general_slice().sha256 and setting["tokens"] > 1000

    (table,) = build_tables(collect_runs([tmp_path])[0])
    (row,) = [r for r in table.rows if r.kind == "run"]
    assert row.forgetting == pytest.approx(after - before)
    assert "forgetting (Δ general ppl vs base)" in render_markdown([table], [])


def test_compare_shows_the_change_as_a_column(tmp_path):
    settings = {SCORE_KEY: {"source": "/usr/share/common-licenses/GPL-3", "sha256": "ab" * 32, "chars": 10061}}
    write_run(tmp_path, "forgot", scores={"perplexity": 30.0, SCORE_KEY: 60.0},
              base_scores={"perplexity": 80.0, SCORE_KEY: 50.0}, metric_settings=settings)
    write_run(tmp_path, "kept", scores={"perplexity": 35.0, SCORE_KEY: 49.0},
              base_scores={"perplexity": 80.0, SCORE_KEY: 50.0}, metric_settings=settings)
    runs, _ = collect_runs([tmp_path])
    (table,) = build_tables(runs)
    by_label = {row.label: row for row in table.rows}
    assert by_label["forgot"].forgetting == pytest.approx(10.0)
    assert by_label["kept"].forgetting == pytest.approx(-1.0)
    markdown = render_markdown([table], [])
    assert "+10 (+20.0%)" in markdown and "-1 (-2.0%)" in markdown
    assert "sha256 abababababab" in markdown
    assert "forgetting (Δ general ppl vs base)" in render_html([table], [])
    rows = {r["run"]: r for r in csv.DictReader(render_csv([table]).splitlines())}
    assert float(rows["forgot"]["forgetting"]) == 10.0 and rows["base: runs/gpt-pretrain-tiny"]["forgetting"] == ""


def test_tables_without_general_scores_have_no_forgetting_column(tmp_path):
    write_run(tmp_path, "plain", scores={"perplexity": 30.0}, base_scores={"perplexity": 80.0})
    (table,) = build_tables(collect_runs([tmp_path])[0])
    assert table.rows[0].forgetting is None
    assert "forgetting" not in render_markdown([table], [])
