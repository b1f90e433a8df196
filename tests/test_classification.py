"""Encoder classification: label mapping, training + exact reload (LoRA head saved), metrics, the TF-IDF baseline.

Everything runs on a tiny BERT (2 layers, hidden 32) with a tiny WordPiece vocabulary built here, on jsonl data
written here: the label is the verb of a short synopsis, an easy 4-class problem with unequal class sizes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import datasets
import pytest
import torch
from safetensors import safe_open
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from pipelines import loop, modeling, run_model, runs
from pipelines.cli import main as cli
from pipelines.errors import TuneforgeError
from pipelines.evaluation import eval_main
from pipelines.recipe import build_recipe
from pipelines.sources import split_for_key
from pipelines.tasks import classification

# Class sizes 40/30/20/10 %: the label order is by training frequency, so ids are predictable.
VERBS = ("copies", "lists", "moves", "prints")
WEIGHTS = (4, 3, 2, 1)
NOUNS = ("files", "lines", "bytes", "words")
FILLER = ("the", "a", "all", "some", "quickly", "slowly", "big", "small")
UNSEEN = "zaps"  # a label that only test rows carry
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VERBS, *NOUNS, *FILLER, UNSEEN, "tool"]


def _row(rng: random.Random, i: int, verb: str) -> dict:
    words = [verb, rng.choice(FILLER), rng.choice(NOUNS)] + [rng.choice(FILLER) for _ in range(rng.randint(0, 6))]
    return {"name": f"tool {i}", "synopsis": " ".join(words), "label": verb}


def write_data(path: Path, n: int = 360) -> Path:
    """n labelled rows, plus two rows with a label that lands only in the test split (hash split of the row)."""
    rng = random.Random(0)
    rows = [_row(rng, i, rng.choices(VERBS, WEIGHTS)[0]) for i in range(n)]
    i = n
    unseen = []
    while len(unseen) < 2:  # the local-file split hashes each row's JSON, so pick rows that hash into test
        row = _row(rng, i, UNSEEN)
        if split_for_key(json.dumps(row, sort_keys=True, default=str)) == "test":
            unseen.append(row)
        i += 1
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + unseen))
    return path


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) and its WordPiece tokenizer, saved like a Hub checkpoint."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)
    assert tokenizer.unk_token_id not in tokenizer("copies the files")["input_ids"]
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=0.2)  # varied random features
    BertForSequenceClassification(config).bert.save_pretrained(out)  # a headless encoder, like the real bases
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("cls-data") / "packages.jsonl")


def raw_recipe(base: Path, data: Path, out: Path, name: str, method: str = "lora", **data_kw) -> dict:
    recipe = {
        "task": "classification",
        "model": {"base": str(base)},
        "data": {"source": str(data), "columns": {"text": "name", "text_pair": "synopsis", "label": "label"},
                 "max_length": 32, **data_kw},
        "train": {"max_steps": 40, "micro_batch_size": 16, "learning_rate": 1e-2, "log_every": 10},
        "eval": {"batch_size": 8},
        "output": {"dir": str(out), "name": name},
    }
    if method == "lora":
        # As the MiniLM recipe: the pooler is trained in full too (and must be saved with the adapter).
        recipe["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "modules_to_save": ["classifier", "pooler"]}
    elif method == "head":
        recipe["train"]["trainable"] = "head"
    return recipe


@pytest.fixture(scope="module")
def lora_run(tiny_bert, data_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cls-runs")
    loop.train(build_recipe(raw_recipe(tiny_bert, data_file, out, "cls-lora")), out / "cls-lora")
    return out / "cls-lora"


def read_predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------------------
# Labels


def _splits(train: list, test: list, validation: list | None = None, texts: dict | None = None):
    def ds(labels, split):
        text = (texts or {}).get(split, [f"text {i}" for i in range(len(labels))])
        return datasets.Dataset.from_dict({"text": text, "label": labels})

    validation = validation or train[:2]
    return datasets.DatasetDict(
        {"train": ds(train, "train"), "validation": ds(validation, "validation"), "test": ds(test, "test")}
    )


def _recipe(**settings):
    return build_recipe({"task": "classification", "model": {"base": "builtin:minilm-l6"},
                         "data": {"source": "x.jsonl", "columns": {"text": "text", "label": "label"}},
                         "classification": settings})


def test_label_set_by_frequency_then_name_with_top_k_and_other():
    train = ["b"] * 3 + ["a"] * 3 + ["c"] * 5 + ["d"] * 1 + ["e"] * 1
    dd, names, report = classification.map_labels(_recipe(), _splits(train, ["a", "e"]))
    assert names == ["c", "a", "b", "d", "e"]  # frequency first, ties (a/b, d/e) by name
    assert dd["test"][classification.LABEL_ID] == [1, 4]

    dd, names, report = classification.map_labels(_recipe(top_k_labels=3), _splits(train, ["a", "d", "e", "c"]))
    assert names == ["c", "a", "b"]
    assert len(dd["train"]) == 11 and report["train"]["dropped"] == 2
    assert dd["test"][classification.LABEL_ID] == [1, 0] and report["test"]["dropped"] == 2

    dd, names, report = classification.map_labels(
        _recipe(top_k_labels=3, other_labels="other"), _splits(train, ["a", "d", "e", "c"])
    )
    assert names == ["c", "a", "b", "other"]
    assert dd["test"][classification.LABEL_ID] == [1, 3, 3, 0] and report["test"]["to_other"] == 2


def test_unseen_labels_are_counted_and_dropped_or_mapped_never_misindexed():
    train = ["x"] * 4 + ["y"] * 2 + ["z"]
    test = ["y", "new", "x", "new", "other2"]
    dd, names, report = classification.map_labels(_recipe(), _splits(train, test))
    assert report["test"] == {"dropped": 3, "to_other": 0, "unseen": {"new": 2, "other2": 1}}
    assert dd["test"]["label"] == ["y", "x"] and dd["test"][classification.LABEL_ID] == [1, 0]
    # With an `other` class (labels beyond the top K exist in training), unseen labels join it.
    dd, names, report = classification.map_labels(_recipe(top_k_labels=2, other_labels="other"), _splits(train, test))
    assert names == ["x", "y", "other"]
    assert dd["test"][classification.LABEL_ID] == [1, 2, 0, 2, 2]
    assert report["test"]["to_other"] == 3 and report["test"]["unseen"] == {"new": 2, "other2": 1}


def test_class_label_feature_gives_names():
    feature = datasets.ClassLabel(names=["negative", "positive"])
    split = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [1, 0, 1]}).cast_column("label", feature)
    splits = datasets.DatasetDict(train=split, validation=split, test=split)
    dd, names, _ = classification.map_labels(_recipe(), splits)
    assert names == ["positive", "negative"]
    assert dd["test"][classification.LABEL_ID] == [0, 1, 0]


@pytest.mark.parametrize(
    ("data", "kw", "message"),
    [
        (_splits(["a", "b"], [1, 2]), {}, "different types per split"),
        (_splits([0.5, 1.5], [0.5]), {}, "all strings or all integers"),
        (_splits(["a", "b", None], ["a"]), {}, "have no label"),
        (_splits(["a", "b"], ["a"], texts={"test": ["  "]}), {}, "empty or not text"),
        (_splits(["a", "b", "c"], ["a"]), {"num_labels": 2},
         "classification.num_labels: 2, but the training split gives 3"),
        (_splits(["a", "a"], ["a"]), {}, "at least 2"),
        (_splits(["a", "b", "c"], ["c"]), {"top_k_labels": 2}, "no test rows are left"),
    ],
)
def test_bad_labels_and_texts_are_clear_errors(data, kw, message):
    with pytest.raises(TuneforgeError, match=message):
        classification.map_labels(_recipe(**kw), data)


def test_mixed_label_types_in_a_file_exit_2(tiny_bert, tmp_path, capsys):
    rows = [{"name": f"tool {i}", "synopsis": "copies the files", "label": i % 2 if i % 3 else "copies"}
            for i in range(60)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(raw_recipe(tiny_bert, path, tmp_path, "mixed")))
    assert cli(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "data.columns.label" in err and "class labels must be all strings or all integers" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------------------------
# A trained run


def test_lora_run_saves_head_label_maps_and_reloads_exactly(lora_run):
    metrics = runs.read_metrics(lora_run)
    assert metrics["status"] == "finished" and metrics["method"] == "lora" and metrics["primary_metric"] == "macro_f1"
    assert metrics["scores"]["accuracy"] > 0.9 > metrics["base_scores"]["accuracy"]  # it learned the verbs
    # The head (pooler + classifier) is trained in full and stored in the adapter file.
    with safe_open(lora_run / "model" / "adapter_model.safetensors", "pt") as f:
        heads = {k: f.get_tensor(k).shape for k in f.keys() if "lora_" not in k}
    assert heads == {
        "base_model.model.classifier.weight": (4, 32), "base_model.model.classifier.bias": (4,),
        "base_model.model.bert.pooler.dense.weight": (32, 32), "base_model.model.bert.pooler.dense.bias": (32,),
    }
    # Label maps round trip through the saved config: ids by training frequency.
    config = json.loads((lora_run / "model" / "config.json").read_text())
    assert config["id2label"] == {str(i): v for i, v in enumerate(VERBS)}
    assert config["label2id"] == {v: i for i, v in enumerate(VERBS)}
    # The unseen test label was dropped, not given some other class's id.
    predictions = read_predictions(lora_run)
    assert metrics["dataset"]["num_examples"] == len(predictions)
    assert {p["reference"] for p in predictions} <= set(VERBS)

    recipe, task, model, tokenizer = run_model.load_run_model(lora_run)
    assert tokenizer.model_max_length == recipe.data.max_length
    probs = classification.predict_proba(model, tokenizer, [p["text"] for p in predictions],
                                         text_pairs=[p["text_pair"] for p in predictions])
    names = classification.label_names(model)
    for row, p in zip(predictions, probs, strict=True):
        assert names[int(p.argmax())] == row["prediction"]
        for label, q in row["probabilities"].items():
            assert float(p[names.index(label)]) == pytest.approx(q, abs=1e-6)


def test_plain_transformers_and_peft_load_the_same_classifier(lora_run):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    model_dir = lora_run / "model"
    base = json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    plain = AutoModelForSequenceClassification.from_pretrained(base, config=AutoConfig.from_pretrained(model_dir))
    plain = PeftModel.from_pretrained(plain, model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = read_predictions(lora_run)[:5]
    enc = tokenizer([r["text"] for r in rows], [r["text_pair"] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = plain(**enc).logits.softmax(-1)
    assert [plain.config.id2label[int(i)] for i in probs.argmax(-1)] == [r["prediction"] for r in rows]


def test_metrics_equal_scikit_learn_on_the_predictions(lora_run):
    metrics = runs.read_metrics(lora_run)
    rows = read_predictions(lora_run)
    y_true, y_pred = [r["reference"] for r in rows], [r["prediction"] for r in rows]
    scores = metrics["scores"]
    assert scores["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert scores["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert scores["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"), abs=1e-12)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(VERBS), zero_division=0)
    for i, name in enumerate(VERBS):
        per = scores["per_class"][name]
        assert (per["precision"], per["recall"], per["f1"], per["support"]) == pytest.approx((p[i], r[i], f[i], s[i]))
    assert (lora_run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_rescores_a_run_exactly_and_redraws_its_confusion_matrix(lora_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "confusion_matrix.png").unlink()
    (run / "predictions.jsonl").unlink()
    before = runs.read_metrics(lora_run)
    assert cli(["eval", str(run)]) == 0
    after = runs.read_metrics(run)
    assert after["scores"] == before["scores"] and after["base_scores"] == before["base_scores"]
    assert after["train"] == before["train"]  # the training record is kept
    assert read_predictions(run) == read_predictions(lora_run)
    assert (run / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Scored on another split: a folder of its own, the run's test scores untouched.
    kept = (run / "metrics.json").read_bytes()
    assert cli(["eval", str(run), "data.splits.test=validation", "eval.score_base=false"]) == 0
    assert (run / "metrics.json").read_bytes() == kept
    other = runs.read_metrics(tmp_path / "copy-on-validation")
    assert other["dataset"]["split"] == "validation" and other["scored_from"] == str(run)
    assert other["base_scores"] is None  # the run's base scores were on the test rows: not carried over
    assert other["dataset"]["fingerprint"] != after["dataset"]["fingerprint"]
    assert len(read_predictions(tmp_path / "copy-on-validation")) == other["dataset"]["num_examples"]


def test_predictions_do_not_depend_on_batch_size_or_padding(lora_run):
    from accelerate import Accelerator

    from pipelines.evaluation import as_base
    from pipelines.scoring import ScoreContext

    recipe, _, model, tokenizer = run_model.load_run_model(lora_run)
    rows = read_predictions(lora_run)
    texts, pairs = [r["text"] for r in rows], [r["text_pair"] for r in rows]
    one = classification.predict_proba(model, tokenizer, texts, pairs, batch_size=1)
    many = classification.predict_proba(model, tokenizer, texts, pairs, batch_size=64)
    torch.testing.assert_close(one, many, atol=1e-6, rtol=0)
    # Extra right padding (masked) leaves the logits unchanged.
    batch = classification.collate([{k: v[i] for k, v in classification.encode(tokenizer, texts, pairs, 32).items()}
                                    for i in range(4)], tokenizer)
    wide = {k: torch.nn.functional.pad(v, (0, 24)) for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(classification.logits(model, batch), classification.logits(model, wide),
                                   atol=1e-5, rtol=0)
    # The scoring path (length-sorted loader, gathered) gives the same scores at any eval batch size.
    accelerator = Accelerator()
    prep = loop.build(as_base(recipe, str(lora_run / "model")), lora_run / "model", accelerator, "resume", merge=False)
    results = []
    for batch_size in (1, 5, 64):
        ctx = ScoreContext(accelerator=accelerator, model=prep.model, tokenizer=prep.tokenizer, recipe=recipe,
                           rows=prep.data["test"], features=prep.features["test"], task=prep.task,
                           batch_size=batch_size)
        results.append(classification.score(ctx))
    for result in results:
        assert result.scores["accuracy"] == runs.read_metrics(lora_run)["scores"]["accuracy"]
        assert [p["prediction"] for p in result.predictions] == [r["prediction"] for r in rows]
        assert result.scores["loss"] == pytest.approx(results[0].scores["loss"], abs=1e-6)


@pytest.mark.parametrize("method", ["full", "head"])
def test_full_and_head_runs_reload_exactly(method, tiny_bert, data_file, tmp_path):
    raw = raw_recipe(tiny_bert, data_file, tmp_path, f"cls-{method}", method=method)
    raw["train"]["max_steps"] = 10
    raw["eval"]["score_base"] = False
    metrics = loop.train(build_recipe(raw), tmp_path / f"cls-{method}")
    assert metrics["method"] == method
    if method == "head":  # a linear probe: only the classifier (32 x 4 + 4) trains; the encoder stays the base
        assert metrics["params"]["trainable"] == 32 * 4 + 4
        from transformers import AutoModel

        base = AutoModel.from_pretrained(tiny_bert).state_dict()
        _, _, model, _ = run_model.load_run_model(tmp_path / f"cls-{method}")
        for name, value in model.bert.state_dict().items():
            torch.testing.assert_close(value, base[name], atol=0, rtol=0)
    _, _, model, tokenizer = run_model.load_run_model(tmp_path / f"cls-{method}")
    rows = read_predictions(tmp_path / f"cls-{method}")
    probs = classification.predict_proba(model, tokenizer, [r["text"] for r in rows], [r["text_pair"] for r in rows])
    names = classification.label_names(model)
    assert [names[int(i)] for i in probs.argmax(-1)] == [r["prediction"] for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# Baseline


def test_baseline_folder_shares_the_runs_test_split(lora_run, tiny_bert, data_file, tmp_path):
    recipe_path = tmp_path / "cls-lora.json"
    recipe_path.write_text(json.dumps(raw_recipe(tiny_bert, data_file, tmp_path, "cls-lora")))
    assert cli(["baseline", str(recipe_path)]) == 0
    folder = tmp_path / "cls-lora-baseline"
    metrics, trained = runs.read_metrics(folder), runs.read_metrics(lora_run)
    assert metrics["method"] == "baseline" and metrics["task"] == "classification"
    assert metrics["dataset"] == trained["dataset"]  # same rows, same fingerprint: one comparison table
    assert metrics["train"]["examples_per_s"] > 0 and metrics["metric_settings"]["baseline"]["C"] in (0.1, 1, 10, 100)
    rows = read_predictions(folder)
    y_true, y_pred = [r["reference"] for r in rows], [r["prediction"] for r in rows]
    assert metrics["scores"]["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert metrics["scores"]["accuracy"] > 0.9  # the verb decides the label: TF-IDF finds it
    assert (folder / "confusion_matrix.png").is_file()
    assert metrics["metric_settings"]["labels"]["test"]["unseen"] == {UNSEEN: 2}
    # `tuneforge eval` on the baseline folder: it has no model to score; say so (not "the run did not finish").
    with pytest.raises(TuneforgeError, match="is a TF-IDF baseline"):
        eval_main(str(folder), recipe_path=None, out=None, overrides=[])
    with pytest.raises(TuneforgeError, match="is a TF-IDF baseline, which has no model"):
        modeling.resolve_base(str(folder))
    # Not a classification recipe: a clear error, exit 2.
    recipe_path.write_text(json.dumps({**json.loads(recipe_path.read_text()), "task": "causal_lm"}))
    assert cli(["baseline", str(recipe_path), "--overwrite"]) == 2


def test_two_processes_equal_one(tiny_bert, data_file, tmp_path):
    """LoRA classification under `torchrun --nproc_per_node 2` (gloo) equals one process accumulating 2 x 8: same
    loss curve, scores and predictions (probabilities gathered across processes, no duplicates)."""
    from conftest import torchrun

    one = raw_recipe(tiny_bert, data_file, tmp_path, "one")
    one["train"].update(max_steps=12, micro_batch_size=8, gradient_accumulation_steps=2, log_every=3)
    two = raw_recipe(tiny_bert, data_file, tmp_path, "two")
    two["train"].update(max_steps=12, micro_batch_size=8, log_every=3)
    loop.train(build_recipe(one), tmp_path / "one")
    torchrun(two, tmp_path)
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert (m1["train"]["processes"], m2["train"]["processes"]) == (1, 2)
    losses = [[r["loss"] for r in runs.read_log(tmp_path / r) if "loss" in r] for r in ("one", "two")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        assert m2["scores"][key] == pytest.approx(m1["scores"][key], abs=1e-9), key
    p1, p2 = read_predictions(tmp_path / "one"), read_predictions(tmp_path / "two")
    assert len(p2) == m2["dataset"]["num_examples"] and [p["prediction"] for p in p1] == [p["prediction"] for p in p2]


def test_balanced_class_weights_scale_each_examples_loss():
    weights = classification.balanced_weights([0, 0, 0, 1])
    assert weights == pytest.approx({0: 4 / (2 * 3), 1: 4 / (2 * 1)})  # scikit-learn's n / (K * count)
    assert sum(weights[y] for y in [0, 0, 0, 1]) == pytest.approx(4)  # the loss keeps its scale

    class Fixed(torch.nn.Module):  # a "classifier" whose logits are given
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": torch.tensor([[2.0, 0.0], [0.0, 1.0]])})()

    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
             "labels": torch.tensor([0, 1])}
    plain, count = classification.loss(Fixed(), batch)
    weighted, _ = classification.loss(Fixed(), {**batch, "weight": torch.tensor([0.5, 3.0])})
    torch.testing.assert_close(weighted, plain * torch.tensor([0.5, 3.0]))
    assert count.tolist() == [1, 1]
