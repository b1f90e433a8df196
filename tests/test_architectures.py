"""The architecture matrix: every family users bring from the Hub goes through tuneforge with `target_modules: auto`.

Each architecture is a tiny random checkpoint of its real config class with a tokenizer laid out like the real
one (tests/tiny_hub.py), trained for 3 steps with LoRA. For each run: LoRA sits on the architecture's own
projections and nowhere else; only adapters (and classifier heads) are saved as trained; the run reloads with
plain `peft` to the logits tuneforge's own loader gives and to the predictions the run wrote; seq2seq decoding
starts from the architecture's own decoder start; chat uses the tokenizer's own template.
The `recipes/hub/` recipes validate against tiny copies of their architectures placed under their Hub ids in a
temporary Hugging Face cache (huggingface_hub's layout), offline.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import huggingface_hub
import pytest
import tiny_hub
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from tiny_hub import ARCHS, NOUNS, VERBS, WORDS
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    set_seed,
)

from pipelines import loop, modeling
from pipelines.cli import main as cli
from pipelines.data import source_kind
from pipelines.errors import TuneforgeError
from pipelines.recipe import build_recipe

ROOT = Path(__file__).resolve().parents[1]
AUTO = {"causal_lm": AutoModelForCausalLM, "chat": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM,
        "classification": AutoModelForSequenceClassification}
MAX_NEW = 6
LR = 2e-2


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def write_data(path: Path, n: int = 96) -> Path:
    """Rows for every task: prompt/text, messages, source/target and text/label, from one random generator."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        verb, noun = rng.choice(VERBS), rng.choice(NOUNS)
        body = " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))
        question, answer = f"what does cmd{i % 10} do", f"cmd{i % 10} {verb} {noun}. {body}"
        rows.append({
            "name_line": f"cmd{i % 10} - {verb} {noun}", "description": answer,
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer},
                         {"role": "user", "content": "and then"}, {"role": "assistant", "content": body}],
            "source": f"{body} {verb} {noun}", "target": f"{noun} {verb}",
            "text": f"{verb} {body} {noun}", "label": verb,
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def raw_recipe(arch: tiny_hub.Arch, base: Path, data: Path, out: Path) -> dict:
    columns = {"causal_lm": {"prompt": "name_line", "text": "description"}, "chat": {"messages": "messages"},
               "seq2seq": {"source": "source", "target": "target"},
               "classification": {"text": "text", "label": "label"}}[arch.task]
    raw = {
        "task": arch.task,
        "model": {"base": str(base)},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "auto"},
        "data": {"source": str(data), "columns": columns, "max_length": 48,
                 "validation_limit": 4, "test_limit": 6},
        "train": {"max_steps": 3, "micro_batch_size": 4, "learning_rate": LR, "log_every": 1, "save_every": 0},
        "eval": {"batch_size": 8, "score_base": False, "generation": {"max_new_tokens": MAX_NEW}},
        "output": {"dir": str(out), "name": arch.name},
    }
    if arch.task == "chat":  # room for the default system prompts of SmolLM2 and Qwen2.5
        raw["chat"] = {"template": "tokenizer", "loss_on": "assistant"}
        raw["data"]["max_length"] = 96
    if arch.task == "seq2seq":
        raw["eval"]["metrics"] = ["rouge"]
        raw["seq2seq"] = {"target_max_length": 16}
    return raw


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("arch-data") / "rows.jsonl")


def run_arch(name: str, tmp_path: Path, data_file: Path) -> tuple[tiny_hub.Arch, Path, Path, dict]:
    arch = ARCHS[name]
    base = tiny_hub.save_checkpoint(arch, tmp_path / "base")
    raw = raw_recipe(arch, base, data_file, tmp_path / "runs")
    metrics = loop.train(build_recipe(raw), tmp_path / "runs" / name)
    return arch, base, tmp_path / "runs" / name, metrics


def leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def check_adapter(arch: tiny_hub.Arch, model_dir: Path, metrics: dict) -> dict[str, torch.Tensor]:
    """LoRA on exactly the architecture's projections; the saved tensors are adapters (+ heads, + new tokens)."""
    cfg = json.loads((model_dir / "adapter_config.json").read_text())
    excluded = set(cfg.get("exclude_modules") or ())  # the head's own linear layers (trained in full instead)
    assert {leaf(m) for m in cfg["target_modules"] if m not in excluded} == set(arch.targets)
    saved = load_file(model_dir / "adapter_model.safetensors")
    lora = {k: v for k, v in saved.items() if ".lora_" in k}
    assert {leaf(k.split(".lora_")[0]) for k in lora} == set(arch.targets)
    other = [k for k in saved if k not in lora]
    for key in other:  # a head saved in full (modules_to_save) or rows of added tokens (trainable_token_indices)
        assert any(f"{h}." in key for h in arch.heads) or "trainable_tokens" in key, key
    if arch.heads:
        assert set(cfg["modules_to_save"]) - {"classifier", "score"} == set(arch.heads) - {"classifier"}  # + PEFT's
        assert {h for h in arch.heads if any(k.startswith(f"base_model.model.{h}.") for k in other)} == set(arch.heads)
    # Every trainable parameter was saved: lora_A/B, heads, token rows (the count matches the run's record).
    assert metrics["params"]["trainable"] == sum(v.numel() for v in saved.values())
    assert all(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at 0: it trained
    return saved


def plain_peft(arch: tiny_hub.Arch, base: Path, model_dir: Path):
    """The run's model as a user loads it: transformers + peft, nothing from tuneforge."""
    kwargs = {"config": AutoConfig.from_pretrained(model_dir)} if arch.task == "classification" else {}
    inner = AUTO[arch.task].from_pretrained(base, **kwargs)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if len(tok) > inner.get_input_embeddings().num_embeddings:
        inner.resize_token_embeddings(len(tok))
    return PeftModel.from_pretrained(inner, model_dir).eval(), tok


def same_logits(arch, model, tok, model_dir: Path, text: str) -> torch.Tensor:
    """Logits of the plain-peft model equal those of tuneforge's own loader on one input."""
    ours = modeling.load_model(str(model_dir), AUTO[arch.task], merge=False).eval()
    enc = tok([text], return_tensors="pt")
    if arch.task == "seq2seq":
        enc["decoder_input_ids"] = torch.tensor([[model.config.decoder_start_token_id, *enc["input_ids"][0, :3]]])
    with torch.no_grad():
        a, b = model(**enc).logits, ours(**enc).logits
    assert torch.equal(a, b)
    return a


def predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", [n for n, a in ARCHS.items() if a.task in ("causal_lm", "chat")])
def test_decoder(name, tmp_path, data_file):
    arch, base, run_dir, metrics = run_arch(name, tmp_path, data_file)
    model_dir = run_dir / "model"
    check_adapter(arch, model_dir, metrics)
    model, tok = plain_peft(arch, base, model_dir)
    same_logits(arch, model, tok, model_dir, "cmd1 copies files")
    assert metrics["scores"]["perplexity"] > 1
    if arch.task != "chat":
        return
    # The tokenizer's own template was used, and was saved with the run.
    assert tok.chat_template == arch.chat_template
    gen = GenerationConfig.from_pretrained(model_dir)
    rows = predictions(run_dir)
    assert rows
    for row in rows[:3]:  # the run's generated answers are what plain transformers generates from the template
        ids = tok.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**ids, generation_config=gen, max_new_tokens=MAX_NEW, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        assert tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip() == row["prediction"]


@pytest.mark.parametrize("name", [n for n, a in ARCHS.items() if a.task == "seq2seq"])
def test_seq2seq(name, tmp_path, data_file):
    arch, base, run_dir, metrics = run_arch(name, tmp_path, data_file)
    model_dir = run_dir / "model"
    check_adapter(arch, model_dir, metrics)
    model, tok = plain_peft(arch, base, model_dir)
    start = {"pad": tok.pad_token_id, "eos": tok.eos_token_id}.get(arch.decoder_start)
    start = tok.convert_tokens_to_ids(arch.decoder_start) if start is None else start
    assert model.config.decoder_start_token_id == start
    same_logits(arch, model, tok, model_dir, "the cat sat")
    rows = predictions(run_dir)
    enc = tok([r["source"] for r in rows], return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=MAX_NEW, num_beams=1, do_sample=False)
    assert out[:, 0].eq(start).all()  # decoding starts from the architecture's own decoder start
    if arch.forced_bos:  # then the forced first token (mBART-50's target language code)
        assert out[:, 1].eq(tok.convert_tokens_to_ids(arch.forced_bos)).all()
        assert GenerationConfig.from_pretrained(base).forced_bos_token_id == out[0, 1]
    texts = [t.strip() for t in tok.batch_decode(out[:, 1:], skip_special_tokens=True)]
    assert texts == [r["prediction"] for r in rows]


@pytest.mark.parametrize("name", [n for n, a in ARCHS.items() if a.task == "classification"])
def test_classifier(name, tmp_path, data_file):
    arch, base, run_dir, metrics = run_arch(name, tmp_path, data_file)
    model_dir = run_dir / "model"
    saved = check_adapter(arch, model_dir, metrics)
    model, tok = plain_peft(arch, base, model_dir)
    same_logits(arch, model, tok, model_dir, "copies the big files")
    # The heads were trained (they differ from the seeded initialisation the run started from) and restored.
    set_seed(0)
    init = AutoModelForSequenceClassification.from_pretrained(base, config=AutoConfig.from_pretrained(model_dir))
    restored = dict(model.named_parameters())
    for head in arch.heads:
        keys = [k for k in saved if k.startswith(f"base_model.model.{head}.")]
        for key in keys:
            param = key.removeprefix("base_model.model.").replace(f"{head}.", f"{head}.modules_to_save.default.", 1)
            assert torch.equal(restored[f"base_model.model.{param}"], saved[key])
        change = max((saved[k] - init.get_parameter(k.removeprefix("base_model.model."))).abs().max() for k in keys)
        assert 0 < change <= 3 * LR  # 3 Adam steps move a weight by at most ~lr each: same init, then trained
    rows = predictions(run_dir)
    enc = tok([r["text"] for r in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    names = model.config.id2label
    assert [names[i] for i in probs.argmax(-1).tolist()] == [r["prediction"] for r in rows]
    for row, p in zip(rows, probs, strict=True):
        for label, q in row["probabilities"].items():
            assert abs(p[model.config.label2id[label]].item() - q) < 1e-5



@pytest.mark.parametrize(("name", "template"), [("phi3", tiny_hub.PHI3_REAL_TEMPLATE),
                                                ("qwen3", tiny_hub.QWEN3_REAL_TEMPLATE)])
def test_templates_that_rewrite_earlier_turns_are_one_clear_error(name, template, tmp_path, data_file):
    """Phi-3's template ends a conversation with EOS, Qwen3's gives only the final answer a <think> block: a
    conversation's prefix then renders differently from the start of the whole conversation, so assistant turns
    cannot be located. Training refuses with one message naming the setting and its fix, before any step."""
    arch = ARCHS[name]
    base = tiny_hub.save_checkpoint(arch, tmp_path / "base")
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = template
    tok.save_pretrained(base)
    messages = json.loads(data_file.read_text().splitlines()[0])["messages"]
    whole = tok.apply_chat_template(messages, tokenize=False)
    assert not whole.startswith(tok.apply_chat_template(messages[:2], tokenize=False))
    raw = raw_recipe(arch, base, data_file, tmp_path / "runs")
    with pytest.raises(TuneforgeError, match=r"^chat\.template: .*use chat\.template=chatml$"):
        loop.train(build_recipe(raw), tmp_path / "runs" / name)
    assert not (tmp_path / "runs" / name / "model").exists()
    # With the recipe's fix, ChatML, the same checkpoint trains (its markers are added as new tokens).
    raw["chat"]["template"] = "chatml"
    metrics = loop.train(build_recipe(raw), tmp_path / "runs" / name, overwrite=True)
    assert metrics["status"] == "finished" and metrics["params"]["trainable"] > 0

# ---------------------------------------------------------------------------------------------------------------
# recipes/hub/ against tiny copies of their architectures in a Hugging Face cache, offline

# Hub id -> (architecture in ARCHS, the real checkpoint's position table, which recipes' max_length is checked on).
HUB_COPIES = {
    "facebook/bart-base": ("bart", {"max_position_embeddings": 1024}),
    "distilbert-base-uncased": ("distilbert", {"max_position_embeddings": 512}),
    "roberta-base": ("roberta", {"max_position_embeddings": 514}),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llama", {"max_position_embeddings": 8192}),  # Llama architecture
}
REVISION = "0123456789abcdef0123456789abcdef01234567"


def populate_cache(cache: Path, repo_id: str) -> Path:
    """A tiny checkpoint of `repo_id`'s architecture in huggingface_hub's cache layout:
    `models--ORG--NAME/snapshots/<revision>/...` with `refs/main` naming that revision."""
    name, config = HUB_COPIES[repo_id]
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    tiny_hub.save_checkpoint(ARCHS[name], repo / "snapshots" / REVISION, **config)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return repo


def validate(capsys, *args: str) -> tuple[int, str]:
    """`tuneforge validate ARGS` in this process: (exit code, what it printed)."""
    code = cli(["validate", *args])
    return code, capsys.readouterr().out


def test_hub_recipes_validate_against_cached_copies_of_their_architectures(tmp_path, monkeypatch, capsys):
    recipes = sorted((ROOT / "recipes" / "hub").glob("*.yaml"))
    bases = {str(path): yaml.safe_load(path.read_text())["model"]["base"] for path in recipes}
    assert set(bases.values()) <= set(HUB_COPIES), "give every recipes/hub/ base a tiny copy in HUB_COPIES"
    cache = tmp_path / "hub"
    for repo_id in set(bases.values()):
        populate_cache(cache, repo_id)
    # HF_HUB_CACHE=cache with HF_HUB_OFFLINE=1 (conftest): huggingface_hub reads the constant at each lookup.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE

    code, out = validate(capsys, *bases)
    assert code == 0, out
    lines = out.splitlines()
    for path in bases:
        assert f"ok   {path}" in lines
    assert "Hub id (needs network" not in out  # the model came from the cache
    # The datasets the recipes name are Hub datasets: validate does not fetch them offline and says so.
    # (The SmolLM2 recipe reads the built-in manpages-chat, which validate does check.)
    sources = {path: yaml.safe_load(Path(path).read_text())["data"]["source"] for path in bases}
    hub_data = [path for path, source in sources.items() if source_kind(source) == "hub"]
    assert len(hub_data) == len(bases) - 1
    assert out.count("is a Hub dataset (needs network; not checked)") == len(hub_data)

    # The cached architecture is what validate checked: a target module it lacks fails, naming what it has.
    code, out = validate(capsys, *bases, "lora.target_modules=[query_key_value]")
    assert code == 2
    for path, base in bases.items():
        model_class = AUTO_NAMES[(ARCHS[HUB_COPIES[base][0]].task, HUB_COPIES[base][0])]
        assert f"FAIL {path}" in out
        assert f"not in {model_class}; it has" in out


AUTO_NAMES = {
    ("seq2seq", "bart"): "BartForConditionalGeneration",
    ("classification", "distilbert"): "DistilBertForSequenceClassification",
    ("classification", "roberta"): "RobertaForSequenceClassification",
    ("chat", "llama"): "LlamaForCausalLM",
}
