"""Causal LM example construction, by hand: packed windows, prompt masking, padding, EOS labels, one BOS."""

from __future__ import annotations

import torch

from pipelines.tasks.causal_lm import IGNORE, collate, num_targets, pack_windows, prompt_example


class Tok:
    pad_token_id = 99


def test_pack_windows_joins_documents_with_eos_and_drops_tail():
    windows = pack_windows([[1, 2, 3], [4, 5], [6, 7, 8, 9]], eos_id=0, window=4)
    # stream: 1 2 3 0 4 5 0 6 7 8 9 0 -> three full windows, no tail
    assert windows == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert pack_windows([[1, 2, 3]], eos_id=0, window=5) == []


def test_prompt_tokens_are_masked_and_real_eos_keeps_its_label():
    ids, labels = prompt_example([10, 11], [20, 21, 22], bos_id=1, eos_id=2, max_length=16)
    assert ids == [1, 10, 11, 20, 21, 22, 2]
    assert labels == [IGNORE, IGNORE, IGNORE, 20, 21, 22, 2]
    assert ids.count(1) == 1  # exactly one BOS


def test_truncation_keeps_prompt_and_cuts_continuation():
    ids, labels = prompt_example([10, 11], [20, 21, 22], bos_id=1, eos_id=2, max_length=5)
    assert ids == [1, 10, 11, 20, 21] and labels == [IGNORE, IGNORE, IGNORE, 20, 21]


def test_eos_equal_to_pad_still_keeps_its_label():
    # Hub GPT-2 uses EOS as pad: labels come from lengths, never from comparing ids with the pad id.
    ids, labels = prompt_example([10], [20], bos_id=None, eos_id=99, max_length=8)
    batch = collate([{"input_ids": ids, "labels": labels}, {"input_ids": [5] * 9, "labels": [5] * 9}], Tok(), None)
    assert batch["input_ids"].shape == (2, 16)  # padded to a multiple of 8
    assert batch["labels"][0].tolist() == [IGNORE, 20, 99] + [IGNORE] * 13
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13
    assert batch["input_ids"][0, 3:].eq(99).all()
    # targets after the one-token shift: row 0 -> 20 and EOS; row 1 -> 8 of 9 tokens
    assert num_targets(batch) == 2 + 8


def test_loss_is_shifted_sum_over_targets():
    from pipelines.tasks.causal_lm import loss

    class Model(torch.nn.Module):
        def forward(self, input_ids, attention_mask, **kwargs):
            logits = torch.zeros(*input_ids.shape, 4)
            logits[..., 3] = 10.0  # always predicts token 3
            return type("Out", (), {"logits": logits})

    batch = {"input_ids": torch.tensor([[0, 3, 1]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.tensor([[IGNORE, 3, 1]])}
    nll, n = loss(Model(), batch)
    p3 = torch.softmax(torch.tensor([0.0, 0.0, 0.0, 10.0]), 0)
    assert n.tolist() == [2]
    assert torch.allclose(nll, -(p3[3].log() + p3[1].log()).unsqueeze(0))
