"""Fine-tune a causal LM with TRL's SFTTrainer: growth (G-Freeze, G-Train), full fine-tuning or LoRA, one flag apart.

Before and after training it measures what the model already knew: the loss on a reference text of its
original domain (--reference; its rise is forgetting) and, with --retention-tasks, zero-shot accuracy on the
lm-eval tasks shipped with peft-grow, read from local files (--data-dir; docs/evaluation.md). Real use, on a GPU:

    python examples/sft_trl.py --model google/gemma-3-1b-pt --dataset allenai/math_qa \\
        --prompt-template "Problem: {Problem}\\nOptions: {options}\\nAnswer:" --completion-template " {correct}" \\
        --method grow-freeze --layers 0-9 --lr 1e-4 --steps 1000 --bf16 --reference wiki.txt \\
        --retention-tasks winogrande,arc_easy --data-dir ../shared/data/tasks --output out/grow
    python examples/sft_trl.py ... --method lora --lr 2e-4       # the same run with LoRA (r=16, all linear layers)

--dataset takes a Hub id or a local .json/.jsonl/.csv/.parquet file. Without templates, the dataset must already
be in a format SFTTrainer reads ("text", "prompt"/"completion" or "messages" columns). Offline smoke run (the
shipped stories260K model and tiny Shakespeare, a few seconds on CPU):

    python examples/sft_trl.py --smoke
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from datasets import Dataset, load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from peft_grow import GrowConfig
from peft_grow.evaluation import reference_loss, retention

DATA = Path(__file__).resolve().parent / "data"
TEST_TASKS = Path(__file__).resolve().parents[1] / "tests" / "data" / "tasks"  # small slices in the original formats
METHODS = ("grow-freeze", "grow-train", "full", "lora")


def parse_layers(text: str | None) -> list[int] | None:
    """'0-9' or '2,5,7' -> a list of layer indices; None grows every layer."""
    if text is None:
        return None
    layers = []
    for part in text.split(","):
        start, _, end = part.partition("-")
        layers.extend(range(int(start), int(end or start) + 1))
    return layers


def peft_config(args) -> GrowConfig | LoraConfig | None:
    if args.method == "full":
        return None
    if args.method == "lora":
        return LoraConfig(
            task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear"
        )
    mode = args.method.removeprefix("grow-")
    return GrowConfig(task_type="CAUSAL_LM", layers=parse_layers(args.layers), k=args.k, mode=mode)


def load_training_data(args) -> Dataset:
    if args.smoke:
        paragraphs = [p for p in (DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
        return Dataset.from_dict({"text": paragraphs[:256]})
    path = Path(args.dataset)
    if path.suffix in (".json", ".jsonl", ".csv", ".parquet"):
        data = load_dataset(path.suffix.lstrip(".").replace("jsonl", "json"), data_files=str(path), split="train")
    else:
        data = load_dataset(args.dataset, args.dataset_config, split=args.split)
    if args.prompt_template:  # build SFTTrainer's prompt/completion format from the dataset's own columns
        data = data.map(
            lambda row: {
                "prompt": args.prompt_template.format(**row),
                "completion": args.completion_template.format(**row),
            },
            remove_columns=data.column_names,
        )
    return data


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Hub id or local folder of the base model")
    parser.add_argument("--dataset", help="Hub id or local .json/.jsonl/.csv/.parquet file")
    parser.add_argument("--dataset-config", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--prompt-template", help='e.g. "Question: {question}\\nAnswer:" (dataset columns in braces)')
    parser.add_argument("--completion-template", default="", help='e.g. " {answer}"')
    parser.add_argument("--method", choices=METHODS, default="grow-freeze")
    parser.add_argument("--layers", help="layers to grow: '0-9' or '2,5,7' (default: all)")
    parser.add_argument("--k", type=int, default=2, help="growth factor")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (new weights stay float32)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--reference", type=Path, help="text of the original domain: its loss is the forgetting proxy")
    parser.add_argument("--retention-tasks", help="comma-separated packaged lm-eval tasks, e.g. winogrande,arc_easy")
    parser.add_argument("--data-dir", type=Path, help="folder of the retention tasks' local files")
    parser.add_argument("--retention-limit", type=int, help="documents per retention task (default: all)")
    parser.add_argument("--output", type=Path, default=Path("sft-output"))
    parser.add_argument("--smoke", action="store_true", help="offline run on the shipped stories260K (seconds, CPU)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.reference = str(DATA / "stories260K"), DATA / "stories260K_samples.txt"
        if args.retention_tasks and not args.data_dir:
            args.data_dir, args.retention_limit = TEST_TASKS, args.retention_limit or 8
        args.steps, args.batch, args.max_length, args.lr = 5, 4, 64, 1e-3
    elif not (args.model and args.dataset):
        parser.error("--model and --dataset are required (or --smoke)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if args.bf16 else torch.float32)
    reference = args.reference.read_text() if args.reference else None
    tasks = args.retention_tasks.split(",") if args.retention_tasks else []

    def original_capability(network) -> dict:
        """The forgetting proxies: reference-text loss (nats) and retention accuracy per task."""
        found = {}
        if reference:
            found["reference loss"] = reference_loss(network, tokenizer, reference, seq_len=128, max_windows=32)
        if tasks:
            found |= retention(network, tokenizer, tasks, data_dir=args.data_dir, limit=args.retention_limit)
        return found

    before = original_capability(model)
    training = SFTConfig(
        output_dir=str(args.output),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        max_length=args.max_length,
        bf16=args.bf16,
        activation_checkpointing=args.gradient_checkpointing,
        logging_steps=max(1, args.steps // 20),
        save_strategy="no",
        report_to=[],
    )
    trainer = SFTTrainer(
        model=model,
        args=training,
        train_dataset=load_training_data(args),
        peft_config=peft_config(args),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()  # an adapter (new weights only) for growth and LoRA, the whole model for full FT
    after = original_capability(trainer.model)
    for measure in before:
        print(f"{args.method}: {measure} {before[measure]:.3f} -> {after[measure]:.3f}")
    print(f"saved to {args.output}")
    return {"method": args.method, "output": str(args.output), "before": before, "after": after}


if __name__ == "__main__":
    main()
