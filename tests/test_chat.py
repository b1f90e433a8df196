"""Chat SFT: token-by-token masks, template = training text, one BOS, EOT-as-pad, packing, a tiny chat run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from demo import inference
from pipelines import run_model, scratch, sources
from pipelines.errors import TuneforgeError
from pipelines.recipe import ScratchConfig, build_recipe
from pipelines.tasks import chat
from pipelines.tasks.chat import IGNORE, IM_END

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What does ls do?"},
    {"role": "assistant", "content": "It lists files."},
    {"role": "user", "content": "Tell me more."},
    {"role": "assistant", "content": "It lists directory contents."},
]


def _tokenizer():
    """A byte-level BPE (GPT-2 layout: <|endoftext|> is BOS/EOS, <|pad|> pads) with ChatML installed."""
    texts = ["system user assistant What does ls do? It lists files. Tell me more. directory contents"] * 30
    tok = scratch.train_tokenizer(texts, ScratchConfig(architecture="gpt2", vocab_size=300, min_frequency=1))
    chat.install_chat_template(tok, "chatml")
    return tok


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


def _recipe(**data):
    return build_recipe({
        "task": "chat", "model": {"base": "unused"},
        "data": {"source": "unused.jsonl", "columns": {"messages": "messages"}, "max_length": 128, **data},
    })


def _tiny_gpt(tok, attn: str = "sdpa") -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config._attn_implementation = attn
    return GPT2LMHeadModel(config).eval()


def test_masks_token_by_token_on_a_two_turn_conversation(tok):
    # The rendering, cut where tokens cannot merge (special tokens, newlines), with the expected target flag.
    segments = [
        ("<|endoftext|>", False),  # BOS
        ("<|im_start|>system\nBe brief.<|im_end|>\n", False),
        ("<|im_start|>user\nWhat does ls do?<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False),  # scaffolding
        ("It lists files.<|im_end|>", True),  # content + end-of-turn
        ("\n", False),
        ("<|im_start|>user\nTell me more.<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False),
        ("It lists directory contents.<|im_end|>", True),
        ("\n", False),
    ]
    pieces = [(tok(text, add_special_tokens=False)["input_ids"], target) for text, target in segments]
    expected_ids = [t for ids, _ in pieces for t in ids]
    expected = [t if target else IGNORE for ids, target in pieces for t in ids]

    ids, labels, truncated = chat.encode_conversation(tok, CONVERSATION, "assistant", 512)
    assert ids == expected_ids and not truncated
    assert labels == expected
    im_end = tok.convert_tokens_to_ids(IM_END)
    # <|im_end|> after system and user turns is -100, after each assistant turn it is a target
    assert [labels[i] == im_end for i, t in enumerate(ids) if t == im_end] == [False, False, True, False, True]
    assert sum(label != IGNORE for label in labels) == len(tok("It lists files.")["input_ids"]) + len(
        tok("It lists directory contents.")["input_ids"]) + 2
    # transformers' own assistant mask ({% generation %} markers in our template) agrees token by token
    hf = tok.apply_chat_template(CONVERSATION, return_assistant_tokens_mask=True, return_dict=True)
    assert hf["assistant_masks"] == [int(label != IGNORE) for label in labels]

    _, last, _ = chat.encode_conversation(tok, CONVERSATION, "last_assistant", 512)
    second = len(expected) - len(pieces[-1][0]) - len(pieces[-2][0])
    assert last == [IGNORE] * second + expected[second:]
    _, everything, _ = chat.encode_conversation(tok, CONVERSATION, "all", 512)
    assert everything == [IGNORE] + expected_ids[1:]  # the first token is never a target


def test_training_text_is_apply_chat_template_with_exactly_one_bos(tok):
    rows = datasets.Dataset.from_dict({"messages": [CONVERSATION, CONVERSATION[1:3]]})
    features = chat.tokenize(rows, tok, _recipe(), "train")
    for row, messages in zip(features, rows["messages"], strict=True):
        assert row["input_ids"] == tok.apply_chat_template(messages)["input_ids"]
        assert tok.decode(row["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)
        assert row["input_ids"].count(tok.bos_token_id) == 1 and row["input_ids"][0] == tok.bos_token_id
    # a template that writes BOS and is fed a BOS again is refused rather than trained on
    doubled = _tokenizer()
    doubled.chat_template = "{{ bos_token }}" + doubled.chat_template
    with pytest.raises(TuneforgeError, match="two BOS"):
        chat.encode_conversation(doubled, CONVERSATION, "assistant", 512)


def test_system_prompt_and_generation_prompt(tok):
    ids = chat.build_prompt_ids(tok, CONVERSATION[1:2], system_prompt="Be brief.")
    assert tok.decode(ids) == (
        "<|endoftext|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat does ls do?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # the budget drops the oldest turns first and keeps the system message
    short = chat.build_prompt_ids(tok, CONVERSATION, max_length=len(ids) + 4)
    assert tok.decode(short).startswith("<|endoftext|><|im_start|>system\nBe brief.") and len(short) <= len(ids) + 4
    assert chat.stop_token_ids(tok) == [tok.convert_tokens_to_ids(IM_END), tok.eos_token_id]
    with pytest.raises(TuneforgeError, match="role"):
        chat.normalize_messages([{"role": "bot", "content": "hi"}])


def test_end_of_turn_keeps_its_label_when_it_is_also_the_pad_token():
    tok = _tokenizer()
    tok.pad_token = IM_END  # as SmolLM2's tokenizer ships
    im_end = tok.convert_tokens_to_ids(IM_END)
    rows = datasets.Dataset.from_dict({"messages": [CONVERSATION, CONVERSATION[1:3]]})
    features = chat.tokenize(rows, tok, _recipe(), "train")
    batch = chat.collate(list(features), tok, _recipe())
    short = len(features[1]["input_ids"])
    assert batch["input_ids"][1, short:].eq(im_end).all()  # padded with the end-of-turn id
    assert batch["labels"][1, short:].eq(IGNORE).all()  # ... which is -100 as padding
    assert batch["labels"][1, short - 2].item() == im_end  # ... but a target where the answer ends
    assert int(batch["labels"][0].eq(im_end).sum()) == 2
    assert chat.TASK.num_targets(batch) == sum(int((torch.tensor(f["labels"]) != IGNORE).sum()) for f in features)


def test_tokenizer_own_template_without_generation_markers():
    # A Zephyr-style template (end of turn = EOS, no {% generation %} markers): spans come from prefix renders.
    texts = ["user assistant What does ls do? It lists files."] * 30
    tok = scratch.train_tokenizer(texts, ScratchConfig(architecture="gpt2", vocab_size=300, min_frequency=1))
    with pytest.raises(TuneforgeError, match="chat.template: 'tokenizer'"):
        chat.install_chat_template(tok, "tokenizer")
    tok.chat_template = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
    size = len(tok)
    chat.install_chat_template(tok, "tokenizer")
    assert len(tok) == size and IM_END not in tok.get_vocab()  # the tokenizer's own template: nothing added
    messages = CONVERSATION[1:3]
    ids, labels, _ = chat.encode_conversation(tok, messages, "assistant", 512)
    answer = tok("It lists files.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    targets = [t for t in labels if t != IGNORE]
    assert targets == answer  # content + end-of-turn, nothing of "<|assistant|>\n" or the trailing newline
    assert chat.end_of_turn_id(tok) == tok.eos_token_id
    # a template whose full rendering does not extend its prefixes cannot be masked: a clear error
    tok.chat_template = "{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(TuneforgeError, match="prefixes"):
        chat.encode_conversation(tok, CONVERSATION[1:5], "assistant", 512)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("loss_on", ["assistant", "all"])
def test_packed_and_unpacked_batches_give_the_same_loss(tok, attn, loss_on):
    convs = [CONVERSATION, CONVERSATION[1:3], CONVERSATION[:3], CONVERSATION[1:], CONVERSATION[1:3]]
    rows = datasets.Dataset.from_dict({"messages": convs})
    unpacked = chat.tokenize(rows, tok, _recipe(packing=False), "train")
    packed = chat.tokenize(rows, tok, _recipe(packing=True), "train")
    assert len(packed) < len(unpacked)  # several conversations share a window
    assert sorted(p for row in packed for p in row["position_ids"] if p == 0) == [0] * len(convs)
    model = _tiny_gpt(tok, attn)
    recipe = _recipe(packing=True)
    with torch.no_grad():
        u_nll, u_n = chat.loss(model, chat.collate(list(unpacked), tok, recipe))
        p_batch = chat.collate(list(packed), tok, recipe)
        assert "position_ids" in p_batch
        p_nll, p_n = chat.loss(model, p_batch)
    assert int(p_n.sum()) == int(u_n.sum()) > 0
    assert torch.allclose(p_nll.sum().double(), u_nll.sum().double(), rtol=1e-5, atol=1e-5)
    # sanity: without position resets (plain causal attention over the window) the loss differs
    with torch.no_grad():
        leaky, _ = chat.causal_lm.loss(model, p_batch)
    assert not torch.allclose(leaky.sum(), u_nll.sum(), rtol=1e-4)


def test_pack_conversations_best_fit_decreasing():
    examples = [([1] * n, [2] * n) for n in (5, 3, 6, 2, 4)]
    out = chat.pack_conversations(examples, window=8)
    # longest first, each into the fullest window it fits: 6 | 5 | 4, then 3 joins 5 and 2 joins 6
    assert out["length"] == [8, 8, 4]
    assert out["input_ids"][0] == [1] * 8 and out["labels"][0] == [2] * 8
    assert out["position_ids"][0] == [0, 1, 2, 3, 4, 5, 0, 1] and out["position_ids"][2] == [0, 1, 2, 3]
    assert all(len(p) == n for p, n in zip(out["position_ids"], out["length"], strict=True))


def test_manpages_chat_rows_follow_their_pages(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "man"
    pages = {"man1/ls.1.gz": ("ls", "list directory contents"), "man5/passwd.5.gz": ("passwd", "the password file"),
             "man3/printf.3.gz": ("printf", "formatted output conversion")}
    for rel, (name, summary) in pages.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        page = f'.TH X 1\n.SH NAME\n{name} \\- {summary}\n.SH DESCRIPTION\nThe {name} page.\nIt says more.\n'
        (root / rel).write_bytes(gzip.compress(page.encode(), mtime=0))
    plain = sources.load_source("manpages", root=root)
    convs = sources.load_source("manpages-chat", root=root)
    for split in sources.SPLITS:
        assert plain[split]["name"] == convs[split]["name"]  # each page's conversation sits in the page's split
    by_name = {r["name"]: r for s in sources.SPLITS for r in convs[s]}
    assert by_name["ls"]["messages"] == [
        {"role": "user", "content": "What does the ls command do?"},
        {"role": "assistant", "content": "List directory contents."},
        {"role": "user", "content": "Tell me more about ls."},
        {"role": "assistant", "content": "The ls page. It says more."},
    ]
    assert by_name["passwd"]["messages"][0]["content"] == "What is the passwd file format?"
    assert by_name["printf"]["messages"][0]["content"] == "What does the printf function do?"


# ---------------------------------------------------------------------------------------------------------------
# A tiny chat run through the shared loop


def _write_chat_corpus(path: Path, n: int = 160) -> Path:
    rows = [{"messages": [
        {"role": "user", "content": f"What does cmd{i} do?"},
        {"role": "assistant", "content": "It lists files."},
    ]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pretrained_tiny_base(out: Path, corpus: Path) -> None:
    """A tied tiny GPT-2 (as the project's own) that saw the questions and answers as plain text, no chat tokens.

    A few seconds of full training: LoRA cannot lift a RANDOM frozen tied embedding (every token then predicts
    itself most), just as real chat finetuning starts from a pretrained base.
    """
    rows = [json.loads(line)["messages"] for line in corpus.read_text().splitlines()]
    texts = [" ".join(m["content"] for m in messages) for messages in rows]
    # merges for the role names too (as a real BPE has), so the template's scaffolding is a few tokens
    tok = scratch.train_tokenizer(corpus.read_text().splitlines() + ["system user assistant"] * 20,
                                  ScratchConfig(architecture="gpt2", vocab_size=300, min_frequency=1))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=96, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = GPT2LMHeadModel(config)
    stream = [t for ids in tok(texts, add_special_tokens=False)["input_ids"] for t in (tok.eos_token_id, *ids)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        starts = torch.randint(0, len(stream) - 33, (16,)).tolist()
        x = torch.tensor([stream[s : s + 32] for s in starts])
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)


def test_tiny_chat_run_learns_to_answer_and_stops_at_end_of_turn(tmp_path):
    from pipelines import loop

    # the base's tokenizer has no chat tokens: the run adds them, trains their rows (LoRA) and saves them
    corpus = _write_chat_corpus(tmp_path / "chat.jsonl")
    _pretrained_tiny_base(tmp_path / "base", corpus)
    recipe = build_recipe({
        "task": "chat", "model": {"base": str(tmp_path / "base")},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "chat": {"template": "chatml", "loss_on": "assistant", "system_prompt": "Be brief."},
        "data": {"source": str(corpus), "columns": {"messages": "messages"}, "max_length": 96, "packing": True},
        "train": {"max_steps": 40, "micro_batch_size": 4, "learning_rate": 1e-2, "warmup_steps": 4, "log_every": 10},
        "eval": {"batch_size": 8, "generation": {"max_new_tokens": 12}},
        "output": {"dir": str(tmp_path / "runs"), "name": "chat-tiny"},
    })
    run_dir = tmp_path / "runs" / "chat-tiny"
    metrics = loop.train(recipe, run_dir)

    assert metrics["task"] == "chat" and metrics["primary_metric"] == "perplexity"
    assert "packed" not in metrics["dataset"]["name"]  # only training windows are packed; scoring is per conversation
    assert metrics["scores"]["perplexity"] < metrics["base_scores"]["perplexity"] / 4
    assert metrics["scores"]["rougeL"] == pytest.approx(1.0)
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert {p["prediction"] for p in predictions} == {"It lists files."}
    assert all(p["prompt"].startswith("What does cmd") for p in predictions)
    assert predictions and len(predictions) == metrics["dataset"]["num_examples"]

    # the saved run: tokenizer with the template and the chat tokens, stop ids in the generation config,
    # an adapter that holds the two new embedding rows but no copy of the embedding matrices
    saved = json.loads((run_dir / "model" / "generation_config.json").read_text())
    _, _, model, tokenizer = run_model.load_run_model(run_dir)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    # the saved tokenizer's EOS is the end of the turn (plain generate() and pipelines stop there); the base's EOS
    # stays a stop token in the generation config
    assert tokenizer.eos_token == IM_END
    assert saved["eos_token_id"] == [im_end, tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert tokenizer.apply_chat_template(CONVERSATION[1:2], tokenize=False) == (
        "<|endoftext|><|im_start|>user\nWhat does ls do?<|im_end|>\n")
    from safetensors.torch import load_file

    weights = load_file(run_dir / "model" / "adapter_model.safetensors")
    assert not any("base_layer" in k for k in weights)
    assert [v.shape for k, v in weights.items() if "trainable_tokens" in k] == [torch.Size([2, 32])]

    # the reloaded run answers a new question in the trained format and stops at <|im_end|>
    prompt = chat.build_prompt_ids(tokenizer, [{"role": "user", "content": "What does cmd999 do?"}], "Be brief.")
    chat.set_stop_tokens(model, tokenizer)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
    assert out[-1] == im_end and len(out) < 12
    assert tokenizer.decode(out, skip_special_tokens=True) == "It lists files."
    settings = recipe.eval.generation
    streamed = list(inference.chat_stream(model, tokenizer, [{"role": "user", "content": "What does cmd7 do?"}],
                                     settings, system_prompt="Be brief."))
    assert streamed[-1] == "It lists files."
