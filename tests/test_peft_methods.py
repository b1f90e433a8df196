"""PEFT methods beyond plain LoRA: each trains, saves, reloads to the same predictions; options are validated.

A tiny BERT classifier (the one of tests/test_classification.py) trains a few steps with each method; the reloaded
run (`run_model.load_run_model`, plain PEFT underneath) must predict exactly what the run wrote.
"""

from __future__ import annotations

import pytest
import yaml

from pipelines import build, loop, optim, run_model, runs
from pipelines.cli import main as cli
from pipelines.errors import TuneforgeError
from pipelines.peft_methods import peft_config
from pipelines.recipe import build_recipe
from pipelines.tasks import classification
from tests.test_classification import data_file, raw_recipe, read_predictions, tiny_bert  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

# lora section -> (method label in metrics.json and tables, trainable parameters on the tiny BERT: adapters plus the
# pooler (32 x 32 + 32) and the 4-class classifier (32 x 4 + 4) trained in full, 1188 in all).
HEAD = 32 * 32 + 32 + 32 * 4 + 4
METHODS = {
    "pissa": ({"init": "pissa", "r": 4}, "lora (pissa)", None),
    "olora": ({"init": "olora", "r": 4}, "lora (olora)", None),
    "gaussian": ({"init": "gaussian", "r": 4}, "lora (gaussian)", None),
    "loraplus": ({"r": 4, "lr_ratio": 16}, "lora+", None),
    # IA3 on BERT (PEFT's targets): key and value outputs (32 each), and the inputs of the layers named
    # `output.dense` (PEFT's suffix match takes attention's (32) as well as the feed-forward's (64)), per layer.
    "ia3": ({"method": "ia3"}, "ia3", 2 * (32 + 32 + 32 + 64)),
    "vera": ({"method": "vera", "r": 16}, "vera", None),
    "loha": ({"method": "loha", "r": 2, "alpha": 4}, "loha", None),
    "oft": ({"method": "oft", "block_size": 4}, "oft", None),
}


def _raw(tiny_bert, data_file, out, name, lora: dict) -> dict:  # noqa: F811
    raw = raw_recipe(tiny_bert, data_file, out, name)
    raw["lora"] = {"modules_to_save": ["classifier", "pooler"], **lora}
    raw["train"]["max_steps"] = 6
    raw["eval"]["score_base"] = False
    return raw


@pytest.mark.parametrize("key", list(METHODS))
def test_method_trains_saves_and_reloads_to_the_same_predictions(key, tiny_bert, data_file, tmp_path):  # noqa: F811
    lora, label, adapter_params = METHODS[key]
    raw = _raw(tiny_bert, data_file, tmp_path, key, lora)
    metrics = loop.train(build_recipe(raw), tmp_path / key)
    assert metrics["status"] == "finished" and metrics["method"] == label
    trainable = metrics["params"]["trainable"]
    assert HEAD < trainable < metrics["params"]["total"]
    if adapter_params is not None:
        assert trainable == HEAD + adapter_params
    # The resolved recipe loads back (only the method's own options were written).
    assert runs.load_run_recipe(tmp_path / key).lora.method == raw["lora"].get("method", "lora")

    _, _, model, tokenizer = run_model.load_run_model(tmp_path / key)
    rows = read_predictions(tmp_path / key)
    probs = classification.predict_proba(model, tokenizer, [r["text"] for r in rows], [r["text_pair"] for r in rows])
    names = classification.label_names(model)
    assert [names[int(i)] for i in probs.argmax(-1)] == [r["prediction"] for r in rows]
    for row, p in zip(rows, probs, strict=True):
        for name, q in row["probabilities"].items():
            assert float(p[names.index(name)]) == pytest.approx(q, abs=1e-5)


def test_loraplus_gives_b_matrices_lr_ratio_times_the_rate(tiny_bert, data_file, tmp_path):  # noqa: F811
    from accelerate import Accelerator

    recipe = build_recipe(_raw(tiny_bert, data_file, tmp_path, "lp", {"r": 4, "lr_ratio": 16}))
    prep = build.build(recipe, tmp_path / "lp", Accelerator(cpu=True), "fresh")
    optimizer = optim.make_optimizer(prep.model, recipe)
    names = {id(p): n for n, p in prep.model.named_parameters()}
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            kind = "B" if "lora_B" in name else "A" if "lora_A" in name else "vector" if p.ndim == 1 else "matrix"
            rates.setdefault(kind, set()).add(group["lr"])
    lr = recipe.train.learning_rate
    # As the LoRA+ reference code (and PEFT's port of it): 1-D parameters (the head's biases) learn at the B rate.
    assert rates == {"A": {lr}, "B": {16 * lr}, "vector": {16 * lr}, "matrix": {lr}}


@pytest.mark.parametrize("lora, message", [
    ({"method": "ia3", "use_dora": True, "r": 4}, "lora.method 'ia3' does not take r (an option of lora / vera / "
     "loha), use_dora (an option of lora)"),
    ({"method": "oft", "lr_ratio": 16}, "lora.method 'oft' does not take lr_ratio (an option of lora)"),
    ({"method": "vera", "init": "pissa"}, "does not take init"),
    ({"method": "lora", "block_size": 8}, "does not take block_size (an option of oft)"),
    ({"method": "loar"}, "lora.method: unknown value 'loar'; did you mean 'lora'?"),
])
def test_an_option_of_another_method_exits_2_before_training(lora, message, tiny_bert, data_file, tmp_path,  # noqa: F811
                                                            capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_raw(tiny_bert, data_file, tmp_path / "runs", "bad", lora)))
    assert cli(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("lora, field", [
    ({"method": "oft"}, "lora.method: oft"), ({"method": "loha"}, "lora.method: loha"),
    ({"init": "olora"}, "lora.init: olora"),
])
def test_methods_peft_cannot_apply_to_gpt2_conv1d_are_refused(lora, field):
    cfg = build_recipe({"task": "causal_lm", "model": {"base": "x"}, "data": {"source": "x.jsonl"},
                        "lora": lora}).lora
    with pytest.raises(TuneforgeError, match=f"{field}: PEFT applies it to nn.Linear layers only"):
        peft_config(cfg, "CAUSAL_LM", modules_to_save=None, exclude_modules=None, trainable_token_indices=None,
                    conv1d=True)


def test_only_lora_trains_added_token_rows():
    cfg = build_recipe({"task": "chat", "model": {"base": "x"}, "data": {"source": "x.jsonl"},
                        "lora": {"method": "ia3"}}).lora
    with pytest.raises(TuneforgeError, match="cannot train the 2 token"):
        peft_config(cfg, "CAUSAL_LM", modules_to_save=None, exclude_modules=None, trainable_token_indices=[40, 41],
                    conv1d=False)


def test_plain_lora_keeps_its_recipe_hash_and_label():
    raw = {"task": "causal_lm", "model": {"base": "x"}, "data": {"source": "x.jsonl"}, "lora": {"r": 4}}
    plain, explicit = build_recipe(raw), build_recipe({**raw, "lora": {"r": 4, "method": "lora", "init": "default"}})
    assert plain.method == explicit.method == "lora"
    assert plain.hash() == explicit.hash()
    assert build_recipe({**raw, "lora": {"r": 4, "init": "pissa"}}).hash() != plain.hash()
