"""A few AdamW steps of G-Freeze on stories260K sharded with FSDP2's fully_shard, for tests/test_distributed.py.

    python tests/scripts/train_fsdp2.py OUT                               # one process, no sharding
    torchrun --nproc_per_node 2 tests/scripts/train_fsdp2.py OUT          # 2 processes (gloo on CPU)

Each decoder layer and then the whole model is wrapped with fully_shard, as accelerate's FSDP2 plugin does.
The new weights are parameters of their own, so FSDP2's per-parameter sharding never mixes trainable and
frozen values in one flat buffer (FSDP1 with use_orig_params=False would). accelerate enables FSDP only on
accelerators, so on CPU this script calls torch directly. The global batch is 4 in both runs.
"""

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from peft import get_peft_model
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from peft_grow import GrowConfig

MODEL = Path(__file__).resolve().parents[2] / "examples" / "data" / "stories260K"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    distributed = dist.is_torchelastic_launched()
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), GrowConfig(layers=[1, 3], k=3))
    if distributed:
        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = torch.randint(3, 512, (16, 32), generator=torch.Generator().manual_seed(0))
    share = 4 // world
    for step in range(4):
        batch = data[step * 4 + rank * share : step * 4 + (rank + 1) * share]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    sharded = any(isinstance(p, DTensor) for p in model.parameters())
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:  # the full state dict is gathered on every rank; only the main process writes
        new = {k: v.contiguous() for k, v in state.items() if ".grow_" in k}
        save_file(new, args.out / "grown.safetensors")
        (args.out / "world.txt").write_text(f"{world} {dist.get_backend() if distributed else 'none'} {sharded=}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
