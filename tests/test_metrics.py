"""The offline evaluate modules against their reference libraries, the task helpers, and the plots."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn import metrics as skm

from eval.metrics import (
    METRIC_NAMES,
    classification_scores,
    generation_scores,
    load_metric,
    perplexity_scores,
)
from pipelines.errors import TuneforgeError

REPO = Path(__file__).resolve().parents[1]

# Fixed generation examples covering the edge cases: an empty prediction, a prediction identical to its
# reference, German umlauts / eszett, punctuation and a two-sentence (newline-separated) summary whose sentences
# come in the other order, where rougeLsum (per-sentence LCS) and rougeL (one LCS) differ.
PREDICTIONS = [
    "the cat sat on the mat",
    "",
    "list directory contents",
    "Die Größe der Datei ist ungültig.",
    "remove them afterwards.\ncopy files",
]
REFERENCES = [
    "the cat is sitting on the mat",
    "print the working directory",
    "list directory contents",
    "Die Dateigröße ist ungültig!",
    "copy files and directories.\nthen remove them",
]


def _rouge_reference(predictions, references, use_stemmer=True):
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=use_stemmer)
    per_example = [scorer.score(ref, pred) for pred, ref in zip(predictions, references, strict=True)]
    return {key: sum(s[key].fmeasure for s in per_example) / len(per_example) for key in per_example[0]}


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_matches_rouge_score(use_stemmer):
    result = load_metric("rouge").compute(predictions=PREDICTIONS, references=REFERENCES, use_stemmer=use_stemmer)
    assert result == pytest.approx(_rouge_reference(PREDICTIONS, REFERENCES, use_stemmer), abs=1e-12)
    # Newlines are sentence boundaries for rougeLsum only, so the two differ on this multi-line example.
    assert result["rougeLsum"] != result["rougeL"]


def test_rouge_edge_cases():
    rouge = load_metric("rouge")
    assert rouge.compute(predictions=["same text here"], references=["same text here"]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0}
    )
    assert rouge.compute(predictions=[""], references=["something"])["rouge1"] == 0.0
    # Several references per example: the best-matching one counts (rouge_score's score_multi).
    multi = rouge.compute(predictions=["a b c"], references=[["x y z", "a b c"]])
    assert multi["rouge1"] == pytest.approx(1.0)


def test_bleu_matches_sacrebleu():
    result = load_metric("bleu").compute(predictions=PREDICTIONS, references=REFERENCES)
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    assert result["score"] == pytest.approx(expected.score, abs=1e-9)
    assert result["counts"] == expected.counts and result["sys_len"] == expected.sys_len
    assert result["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_bleu_multi_reference_and_edge_cases():
    bleu = load_metric("bleu")
    refs_a, refs_b = REFERENCES, [r.upper() for r in REFERENCES]
    # Per-example reference lists are transposed into sacrebleu's reference streams.
    result = bleu.compute(
        predictions=PREDICTIONS, references=[list(pair) for pair in zip(refs_a, refs_b, strict=True)]
    )
    assert result["score"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [refs_a, refs_b]).score)
    assert result["signature"].startswith("nrefs:2|")
    assert bleu.compute(predictions=["Größe über alles heute"], references=["Größe über alles heute"])[
        "score"
    ] == pytest.approx(100)
    assert bleu.compute(predictions=[""], references=["a reference"])["score"] == 0.0
    single = bleu.compute(predictions=["the quick brown fox"], references=["the quick brown dog"], tokenize="intl")
    assert single["score"] == pytest.approx(
        sacrebleu.corpus_bleu(["the quick brown fox"], [["the quick brown dog"]], tokenize="intl").score
    )
    with pytest.raises(ValueError, match="same number of references"):
        bleu.compute(predictions=["a", "b"], references=[["a"], ["b", "c"]])


@pytest.mark.parametrize("word_order", [0, 2])
def test_chrf_matches_sacrebleu(word_order):
    result = load_metric("chrf").compute(predictions=PREDICTIONS, references=REFERENCES, word_order=word_order)
    expected = sacrebleu.metrics.CHRF(word_order=word_order)
    assert result["score"] == pytest.approx(expected.corpus_score(PREDICTIONS, [REFERENCES]).score, abs=1e-9)
    assert f"|nw:{word_order}|" in result["signature"]


def test_chrf_edge_cases():
    chrf = load_metric("chrf")
    assert chrf.compute(predictions=["Größe"], references=["Größe"])["score"] == pytest.approx(100.0)
    assert chrf.compute(predictions=[""], references=["Größe"])["score"] == 0.0


Y_TRUE = [0, 1, 2, 2, 1, 0, 3, 2, 1, 1]
Y_PRED = [0, 2, 2, 2, 1, 0, 1, 2, 1, 0]


@pytest.mark.parametrize("average", ["micro", "macro", "weighted"])
@pytest.mark.parametrize("name,reference", [("precision", skm.precision_score), ("recall", skm.recall_score),
                                            ("f1", skm.f1_score)])  # fmt: skip
def test_precision_recall_f1_match_sklearn(name, reference, average):
    result = load_metric(name).compute(predictions=Y_PRED, references=Y_TRUE, average=average)[name]
    assert result == pytest.approx(reference(Y_TRUE, Y_PRED, average=average, zero_division=0.0))
    per_class = load_metric(name).compute(predictions=Y_PRED, references=Y_TRUE, average=None, labels=[3, 2, 1, 0, 4])
    assert per_class[name] == pytest.approx(
        list(reference(Y_TRUE, Y_PRED, average=None, labels=[3, 2, 1, 0, 4], zero_division=0.0))
    )


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_binary_accuracy_mcc_match_sklearn():
    y_true, y_pred = [1, 0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 1, 0, 1]
    assert load_metric("f1").compute(predictions=y_pred, references=y_true)["f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred)
    )
    assert load_metric("accuracy").compute(predictions=Y_PRED, references=Y_TRUE)["accuracy"] == pytest.approx(0.7)
    mcc = load_metric("matthews_correlation").compute(predictions=Y_PRED, references=Y_TRUE)
    assert mcc["matthews_correlation"] == pytest.approx(skm.matthews_corrcoef(Y_TRUE, Y_PRED))
    # A single example: accuracy is defined, MCC degenerates to sklearn's 0.0 rather than NaN.
    assert load_metric("accuracy").compute(predictions=[3], references=[3])["accuracy"] == 1.0
    assert load_metric("matthews_correlation").compute(predictions=[3], references=[3])["matthews_correlation"] == 0.0


def test_classification_scores_helper():
    names = ["admin", "devel", "doc", "games", "net"]
    result = classification_scores(Y_TRUE, Y_PRED, labels=[0, 1, 2, 3, 4], label_names=names)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(Y_TRUE, Y_PRED))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert result["weighted_f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average="weighted"))
    assert result["micro_f1"] == pytest.approx(skm.f1_score(Y_TRUE, Y_PRED, average="micro"))
    assert result["mcc"] == pytest.approx(skm.matthews_corrcoef(Y_TRUE, Y_PRED))
    report = skm.classification_report(Y_TRUE, Y_PRED, labels=[0, 1, 2, 3, 4], output_dict=True, zero_division=0.0)
    for label, name in enumerate(names):
        ours, theirs = result["per_class"][name], report[str(label)]
        assert ours == pytest.approx(
            {"precision": theirs["precision"], "recall": theirs["recall"], "f1": theirs["f1-score"],
             "support": theirs["support"]}
        )  # fmt: skip
    json.dumps(result)  # goes straight into metrics.json


def test_generation_scores_helper():
    scores, settings = generation_scores(PREDICTIONS, REFERENCES, metrics=("rouge", "bleu", "chrf"))
    assert set(scores) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf"}
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert settings["rouge"]["use_stemmer"] is True and settings["rouge"]["scale"] == "0-1"
    assert settings["bleu"]["signature"].startswith("nrefs:1|") and settings["chrf"]["scale"] == "0-100"
    json.dumps([scores, settings])
    with pytest.raises(TuneforgeError, match="not generation metrics"):
        generation_scores(["a"], ["a"], metrics=("accuracy",))


def test_perplexity_is_exp_of_total_nll_over_total_tokens():
    # Two batches: 10 nats over 2 tokens and 2 nats over 8 tokens. The corpus perplexity is exp(12 / 10);
    # the mean of per-batch perplexities, (exp(5) + exp(0.25)) / 2, would be ~75 instead of ~3.3.
    nll, tokens = [10.0, 2.0], [2, 8]
    result = perplexity_scores(nll, tokens)
    assert result == {"perplexity": pytest.approx(math.exp(1.2)), "loss": pytest.approx(1.2), "num_tokens": 10}
    mean_of_batches = sum(math.exp(n / t) for n, t in zip(nll, tokens, strict=True)) / 2
    assert abs(result["perplexity"] - mean_of_batches) > 70


def test_perplexity_independent_of_batching():
    nll = [3.5, 0.25, 7.0, 1.125, 9.0]
    tokens = [3, 1, 4, 2, 6]
    metric = load_metric("perplexity")
    for batch in ([0, 1], [2], [3, 4]):
        metric.add_batch(nll_sum=[nll[i] for i in batch], num_tokens=[tokens[i] for i in batch])
    streamed = metric.compute()
    assert streamed == perplexity_scores(nll[::-1], tokens[::-1]) == perplexity_scores(nll, tokens)
    assert streamed["perplexity"] == pytest.approx(math.exp(sum(nll) / sum(tokens)))
    assert perplexity_scores([4.0], [2])["perplexity"] == pytest.approx(math.exp(2.0))  # a single example
    assert perplexity_scores([800.0], [1])["perplexity"] == math.inf  # overflow is inf, not an exception
    with pytest.raises(ValueError, match="no scored tokens"):
        perplexity_scores([0.0], [0])


def test_unknown_metric_suggests_the_closest_name():
    with pytest.raises(TuneforgeError, match="Did you mean 'rouge'"):
        load_metric("rogue")
    with pytest.raises(TuneforgeError, match="Did you mean 'matthews_correlation'"):
        load_metric("matthews_corr")
    with pytest.raises(TuneforgeError, match="Available metrics"):
        load_metric("zzz")


def test_every_metric_loads_offline_with_an_empty_cache(tmp_path):
    """A fresh process with the Hub switched off, empty HF caches and a dead proxy still loads every module."""
    hf_home = tmp_path / "hf"
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        # Any attempt to reach the network fails at once instead of hanging.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PYTHONPATH": str(REPO),
    }
    env.pop("HF_MODULES_CACHE", None)
    script = textwrap.dedent(
        """
        import json
        from eval.metrics import METRIC_NAMES, load_metric
        out = {}
        for name in METRIC_NAMES:
            metric = load_metric(name)
            if name == "perplexity":
                out[name] = metric.compute(nll_sum=[2.0], num_tokens=[1])["perplexity"]
            elif name in ("rouge", "bleu", "chrf"):
                out[name] = metric.compute(predictions=["a b c d"], references=["a b c d"])
            else:
                out[name] = metric.compute(predictions=[1, 0], references=[1, 0])
        print(json.dumps(sorted(out)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == sorted(METRIC_NAMES)
    # evaluate imports each script from a copy under HF_HOME (it must be writable), never from ~/.cache.
    assert (hf_home / "modules" / "evaluate_modules" / "metrics" / "rouge").is_dir()


def test_confusion_matrix_and_loss_curve_png(tmp_path):
    from eval.plots import confusion_matrix_png, loss_curve_png

    names = [f"section-{i}" for i in range(20)]
    y_true = [i % 20 for i in range(200)]
    y_pred = [(i * 7) % 20 if i % 3 else i % 20 for i in range(200)]
    png = confusion_matrix_png(y_true, y_pred, names, tmp_path / "cm" / "confusion.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 4.0 / s, "lr": 1e-3}) for s in range(1, 20)]
    lines += [json.dumps({"step": 10, "eval_loss": 0.5}), '{"step": 20, "lo']  # truncated last line is skipped
    log.write_text("\n".join(lines), encoding="utf-8")
    assert loss_curve_png(log, tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(TuneforgeError, match="no 'loss'"):
        loss_curve_png(tmp_path / "empty.jsonl", tmp_path / "x.png")
