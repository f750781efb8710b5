"""A few Trainer steps of G-Freeze on stories260K, for tests/test_distributed.py.

    python tests/scripts/train_ddp.py OUT --batch 4
    accelerate launch --cpu --num_processes 2 tests/scripts/train_ddp.py OUT --batch 2
    (add --guard-batch N for the retention guard: N windows per process and step)

Every sequence has the same length, so the mean loss over a global batch of 4 is the mean of the two processes'
losses over 2 each: data-parallel training must give the single-process adapter. Each call of the adapter's
save_pretrained is logged with the rank that made it, to check that only the main process writes.
"""

import argparse
import os
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from peft_grow import GrowConfig
from peft_grow.training import GuardedTrainer, RetentionGuard, self_generated_windows

MODEL = Path(__file__).resolve().parents[2] / "examples" / "data" / "stories260K"


class RandomText(torch.utils.data.Dataset):
    """Fixed random token sequences: enough for a trainer to take real steps (tests/test_trainer.py uses it too)."""

    def __init__(self, rows: int = 16, length: int = 32, vocab: int = 512) -> None:
        self.ids = torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch", type=int, required=True, help="per-process batch size")
    parser.add_argument("--guard-batch", type=int, help="train with a retention guard reading this many windows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    save = PeftModel.save_pretrained

    def logged_save(self, *a, **kw):  # record who writes the adapter
        with open(args.out / "saves.log", "a") as log:
            log.write(f"{os.environ.get('RANK', '0')}\n")
        return save(self, *a, **kw)

    PeftModel.save_pretrained = logged_save
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), GrowConfig(layers=[1, 3], k=3))
    training = TrainingArguments(
        output_dir=str(args.out),
        max_steps=4,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    if args.guard_batch:  # every process samples the same windows (seeded) and reads its own rows of them
        windows = self_generated_windows(model, AutoTokenizer.from_pretrained(MODEL), count=16, length=16, batch=8)
        guard = RetentionGuard(windows, weight=5.0, batch_size=args.guard_batch)
        trainer = GuardedTrainer(model=model, args=training, train_dataset=RandomText(rows=32), retention_guard=guard)
    else:
        trainer = Trainer(model=model, args=training, train_dataset=RandomText(rows=32))
    trainer.train()
    trainer.save_model()
    if trainer.is_world_process_zero():
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
        (args.out / "world.txt").write_text(f"{trainer.args.world_size} {backend}")


if __name__ == "__main__":
    main()
