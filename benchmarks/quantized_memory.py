"""Memory of fine-tuning a bitsandbytes 4-bit base (QLoRA-style): growth against LoRA on the same base.

A model of SmolLM2-135M's shape (llama, 30 layers, hidden 576, MLP 1536; random weights, which do not change
memory) is saved once in float32, then each setting runs in a fresh process: load (float32 or 4-bit NF4 with
float32 compute), attach the adapter, take --steps AdamW steps on one batch. Each process reports the model's
bytes (model.get_memory_footprint()), its trainable parameters, and the process's peak resident memory, so that
the settings are measured side by side in one run.

    python -m benchmarks.quantized_memory            # a few minutes on 2 CPU cores, about 3 GB of memory
    python -m benchmarks.quantized_memory --model-dir ~/.cache/peft-grow/models/smollm2-135m/hf   # real weights

Needs bitsandbytes (the `quantization` extra). On CUDA (--device cuda) the peak is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from peft_grow import GrowConfig  # noqa: E402

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)
SETTINGS = {  # name: (4-bit base?, adapter config or None for full fine-tuning)
    "full fine-tuning, float32": (False, None),
    "4-bit + G-Freeze, all layers": (True, lambda n: GrowConfig(k=2)),
    "4-bit + G-Freeze, top third": (True, lambda n: GrowConfig(k=2, layers=list(range(n - n // 3, n)))),
    "4-bit + G-Train, top third": (True, lambda n: GrowConfig(k=2, mode="train", layers=list(range(n - n // 3, n)))),
    "4-bit + LoRA r=16, all linear": (
        True,
        lambda n: LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"),
    ),
}


def measure(path: str, setting: str, device: str, steps: int, tokens: int, queue) -> None:
    warnings.filterwarnings("ignore")
    quantize, adapter = SETTINGS[setting]
    kwargs = (
        {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")} if quantize else {}
    )
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device, **kwargs)
    layers = model.config.num_hidden_layers
    if adapter is not None:
        model = get_peft_model(model, adapter(layers))
    model.train()  # bitsandbytes' CPU kernel for eval mode repacks 4-bit weights and passes no gradient
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    footprint = model.get_memory_footprint()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(3, model.config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    )
    queue.put({"setting": setting, "trainable": trainable, "footprint": footprint, "peak": peak})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", help="a saved model to use instead of SmolLM2-135M's shape with random weights")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=2, help="AdamW steps per setting (default 2)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens in the one training sequence (default 128)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")  # a fresh process per setting: peaks do not mix
    with tempfile.TemporaryDirectory() as scratch:
        path = args.model_dir
        if path is None:
            path = scratch
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **SMOLLM2_135M)).save_pretrained(path)
        rows = []
        for setting in SETTINGS:
            queue = context.Queue()
            process = context.Process(target=measure, args=(path, setting, args.device, args.steps, args.tokens, queue))
            process.start()
            rows.append(queue.get())
            process.join()
    full = rows[0]
    peak_name = "peak GPU memory" if args.device == "cuda" else "peak resident memory"
    print(f"| setting | trainable parameters | model bytes | {peak_name} | peak vs full fine-tuning |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['setting']} | {row['trainable'] / 1e6:.1f}M | {row['footprint'] / 2**20:.0f} MiB | "
            f"{row['peak'] / 2**20:.0f} MiB | {row['peak'] / full['peak']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
