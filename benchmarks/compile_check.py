"""Is a grown model torch.compile friendly? Counts graphs and graph breaks with torch._dynamo.explain and runs
one compiled training step (forward and backward), for G-Freeze and G-Train on a small llama-style model; then
two steps of transformers.Trainer with torch_compile=True on a grown stories260K.

    python -m benchmarks.compile_check        # about two minutes on 2 CPU cores (compilation dominates)
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
import torch._dynamo as dynamo
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments
from transformers.utils import logging

from peft_grow import GrowConfig


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    config = AutoConfig.for_model(
        "llama", hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128,
    )  # fmt: skip
    ids = torch.randint(0, 128, (2, 16))
    for grow in (GrowConfig(k=2, layers=[0]), GrowConfig(k=3, mode="train", symmetry_noise=0.1)):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_config(config), grow)
        explanation = dynamo.explain(lambda batch, model=model: model(input_ids=batch, labels=batch).loss)(ids)
        dynamo.reset()
        loss = torch.compile(model)(input_ids=ids, labels=ids).loss
        loss.backward()
        eager = model(input_ids=ids, labels=ids).loss
        print(
            f"mode={grow.mode} k={grow.k}: {explanation.graph_count} graph(s), {explanation.graph_break_count} graph "
            f"break(s); compiled step ran, |compiled - eager loss| = {abs(loss.item() - eager.item()):.1e}"
        )

    trainer_compile_check()


def trainer_compile_check() -> None:
    stories = Path(__file__).resolve().parents[1] / "examples" / "data" / "stories260K"
    ids = torch.randint(3, 512, (8, 32), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(stories), GrowConfig(layers=[1, 3]))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, max_steps=2, per_device_train_batch_size=4, torch_compile=True, report_to=[])
        result = Trainer(model=model, args=args, train_dataset=data).train()
    print(f"Trainer(torch_compile=True) on a grown stories260K: 2 steps ran, loss {result.training_loss:.3f}")


if __name__ == "__main__":
    main()
