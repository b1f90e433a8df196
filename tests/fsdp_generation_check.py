"""Generation with FSDP-sharded weights gives what the unsharded model generates (torch FSDP on gloo, CPU).

`torchrun --nproc_per_node 2 tests/fsdp_generation_check.py` (no ACCELERATE_USE_CPU: Accelerate does not engage
FSDP on CPU, so this wraps torch's FullyShardedDataParallel itself, as Accelerate's FSDP plugin would: full shard,
each GPT-2 block one unit, use_orig_params). Each rank greedily generates for its own prompts, of different
lengths and stopping at different steps, inside `distributed.generation_context`; the result must equal the
same model's generation without FSDP (without the context, the root unit's sharded embedding fails generate:
"'weight' must be 2-D"). Prints "same generations" and exits 0.
"""

from __future__ import annotations

import functools
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from pipelines import distributed


def main() -> int:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=16, n_layer=2, n_head=2,
                                       eos_token_id=3, bos_token_id=3, pad_token_id=0)).eval()
    # Per rank: different prompt lengths and, with max_new_tokens differing, different numbers of decoding steps.
    prompts = torch.tensor([[5, 6, 7, 8, 9, 10]]) if rank == 0 else torch.tensor([[11, 12]])
    new_tokens = 12 if rank == 0 else 4
    kwargs = {"attention_mask": torch.ones_like(prompts), "max_new_tokens": new_tokens, "do_sample": False,
              "pad_token_id": 0}
    reference = model.generate(prompts, **kwargs)
    wrapped = FSDP(model, sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True,
                   device_id=torch.device("cpu"),
                   auto_wrap_policy=functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={GPT2Block}))
    plugin = SimpleNamespace(fsdp_version=1, sharding_strategy=ShardingStrategy.FULL_SHARD)
    # What generation_context reads from an Accelerator under its FSDP plugin (Accelerate keeps FSDP off on CPU).
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin))
    with distributed.generation_context(accelerator, wrapped) as synced:
        assert synced is True
        out = wrapped.module.generate(prompts, synced_gpus=synced, **kwargs)
    assert torch.equal(out, reference), (rank, out, reference)
    dist.barrier()
    if rank == 0:
        print("same generations")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
