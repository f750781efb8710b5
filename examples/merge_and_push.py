"""Merge a grown adapter into one wider model that plain transformers loads, check it, and optionally push it.

    python examples/merge_and_push.py BASE ADAPTER OUT                          # e.g. the output of sft_trl.py
    python examples/merge_and_push.py BASE ADAPTER OUT --push-to you/model-grown --push-adapter-to you/adapter
    python examples/merge_and_push.py --smoke                                   # offline, a few seconds

BASE is the Hub id or folder of the base model, ADAPTER the adapter folder. `--layout pad` (default) writes a
standard checkpoint; `per-layer` keeps each MLP's own width and loads with peft_grow.load_merged. Pushing needs
a Hub token (`huggingface-cli login`); each pushed folder carries a model card that says how to load it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import peft_grow
from peft_grow import GrowConfig

STORIES = Path(__file__).resolve().parent / "data" / "stories260K"


def smoke_adapter(folder: Path) -> Path:
    """A grown stories260K adapter moved off its start (as training would), saved to `folder`."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(STORIES), GrowConfig(layers=[1, 3], init_weights=False))
    model.save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", nargs="?")
    parser.add_argument("adapter", nargs="?", type=Path)
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--layout", choices=("pad", "per-layer"), default="pad")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the base model's")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--push-to", help="Hub repo id for the merged model")
    parser.add_argument("--push-adapter-to", help="Hub repo id for the adapter itself")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="merge a stories260K adapter made on the spot")
    args = parser.parse_args(argv)
    if args.smoke:
        scratch = Path(tempfile.mkdtemp(prefix="merge-smoke-"))
        args.base, args.adapter, args.out = str(STORIES), smoke_adapter(scratch / "adapter"), scratch / "merged"
    elif not (args.base and args.adapter and args.out):
        parser.error("BASE, ADAPTER and OUT are required (or --smoke)")

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.base, dtype="auto"), args.adapter)
    model.eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        merged = peft_grow.save_merged(model, args.out, layout=args.layout, dtype=args.dtype, overwrite=args.overwrite)
        # a pad checkpoint is standard; a per-layer one needs peft_grow.load_merged (which also reads pad ones)
        reloaded = peft_grow.load_merged(args.out) if args.layout == "per-layer" else None
        reloaded = reloaded or AutoModelForCausalLM.from_pretrained(args.out)
        difference = (reloaded(ids).logits.float() - expected.float()).abs().max().item()
    print(
        f"merged {type(merged).__name__} saved to {args.out}; max |logit difference| vs the adapter: {difference:.1e}"
    )

    if args.push_to:
        print("pushed:", peft_grow.push_folder_to_hub(args.out, args.push_to, private=args.private))
    if args.push_adapter_to:
        print("pushed:", peft_grow.push_folder_to_hub(args.adapter, args.push_adapter_to, private=args.private))
    if args.smoke:
        shutil.rmtree(args.out.parent)
    return difference


if __name__ == "__main__":
    main()
