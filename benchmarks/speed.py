"""Training and inference cost of grown models, measured side by side in one run (docs/performance.md).

Training variants, each from the same random base model and the same batch:
  full           full fine-tuning of the base model
  lora           LoRA r=16 on every Linear layer of the blocks
  g-freeze       G-Freeze, k=2, every layer
  g-freeze-1/3   G-Freeze, k=2, every third layer
  g-train        G-Train, k=2, every layer
  wide-ref       the reference that bounds what growth can cost: the merged, equally wide plain model (every MLP
                 k=2 times wider) with its MLP weights trainable and everything else frozen
  X+guard        X (g-freeze, lora, full) with the retention guard (peft_grow.training) at weight 1, reading a
                 quarter of the task batch of retention windows each step; the adapters' base is their adapter
                 disabled, full fine-tuning's a frozen reference copy (its weights are counted)
Inference: the base model, the grown model with its adapter unmerged, the same PeftModel after merge_adapter()
(merged in place, adapter kept), and merged for good (merge_and_unload); prefill (a forward pass over the batch)
and decode (one token at a time from a prefilled cache).

In a half-precision setting, training runs under autocast, as Trainer(bf16=True) does, with PEFT's default
float32 new weights (docs/training.md). Inference runs without autocast, with the new weights in the model's
dtype, as after PeftModel.from_pretrained(..., autocast_adapter_dtype=False) or model.to(dtype); one more row
measures the grown model with float32 new weights, PEFT's default when loading, which computes the new half of
every grown MLP in float32.

Times are medians over --repeats rounds; in each round every variant runs once, in turn, so that drift of this
(noisy, shared) machine hits all of them alike; the spread is the interquartile range. Ratios are medians of the
per-round ratios, so that drift between rounds cancels out of them. Memory is counted exactly from the tensors:
weights, gradients, AdamW state, and the activations autograd saves for the backward pass (plus the allocator's
peak on CUDA).

    python -m benchmarks.speed                         # CPU setting, a few minutes on 2 cores
    python -m benchmarks.speed --setting gemma3-1b     # GPU setting: Gemma3-1B shape, random weights, bf16
    python -m benchmarks.speed --setting gemma3-1b --report docs/speed_gemma3-1b_h200.json   # saved tables
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging

from peft_grow import GrowConfig
from peft_grow.sequences import cached_forward
from peft_grow.testing import GEMMA3_1B
from peft_grow.training import RetentionGuard

SETTINGS = {
    # name: (model_type, config kwargs, dtype, batch, sequence length, device)
    "tiny": ("llama", dict(hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=96), "float32", 2, 16, "cpu"),
    "cpu": ("llama", dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6, num_attention_heads=8,
                          num_key_value_heads=4, vocab_size=2048), "float32", 8, 128, "cpu"),
    "gemma3-1b": ("gemma3_text", GEMMA3_1B, "bfloat16", 4, 1024, "cuda"),
}  # fmt: skip


@dataclass
class Measurement:
    name: str
    times: list[float] = field(default_factory=list)
    trainable: int = 0
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    device_peak: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        return interquartile_range(self.times)

    def ratio(self, reference: Measurement) -> tuple[float, float]:
        """(median, IQR) of the per-round ratios to `reference`, timed in the same rounds: drift between rounds
        cancels out of each ratio."""
        ratios = [mine / theirs for mine, theirs in zip(self.times, reference.times, strict=True)]
        return statistics.median(ratios), interquartile_range(ratios)

    @property
    def total_memory(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def interquartile_range(values: list[float]) -> float:
    if len(values) < 4:
        return max(values) - min(values)
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[2] - quartiles[0]


def build_base(setting: str):
    model_type, kwargs, dtype, batch, length, device = SETTINGS[setting]
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(device=device, dtype=getattr(torch, dtype))
    ids = torch.randint(0, config.vocab_size, (batch, length), device=device)
    return model, ids


def autocast(ids, dtype: torch.dtype):
    """Autocast to `dtype` for a half-precision setting (how Trainer(bf16=True) runs each step), else nothing."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(ids.device.type, dtype=dtype)


def training_variants(base, guarded: bool = True) -> dict[str, torch.nn.Module]:
    layers = base.config.num_hidden_layers
    variants = {
        "full": copy.deepcopy(base),
        "lora": get_peft_model(copy.deepcopy(base), LoraConfig(r=16, target_modules="all-linear")),
        "g-freeze": get_peft_model(copy.deepcopy(base), GrowConfig(k=2)),
        "g-freeze-1/3": get_peft_model(copy.deepcopy(base), GrowConfig(k=2, layers=list(range(0, layers, 3)))),
        "g-train": get_peft_model(copy.deepcopy(base), GrowConfig(k=2, mode="train")),
    }
    wide = get_peft_model(copy.deepcopy(base), GrowConfig(k=2)).merge_and_unload()
    for name, param in wide.named_parameters():
        param.requires_grad = ".mlp." in name
    variants["wide-ref"] = wide
    for name in GUARDED if guarded else ():
        variants[f"{name}+guard"] = copy.deepcopy(variants[name])
    return variants


GUARDED = ("full", "lora", "g-freeze")


def guards(variants: dict, ids: torch.Tensor) -> dict[str, RetentionGuard]:
    """A retention guard for each X+guard variant: a quarter of the task batch of random windows as long as its
    rows (their content does not change the cost), and a frozen copy of the base as full fine-tuning's reference."""
    batch, length = ids.shape
    windows = torch.randint(0, int(ids.max()) + 1, (64, length), generator=torch.Generator().manual_seed(1))
    found = {}
    for name, model in variants.items():
        if name.endswith("+guard"):
            reference = copy.deepcopy(variants["full"]) if name == "full+guard" else None
            found[name] = RetentionGuard(windows, weight=1.0, batch_size=max(1, batch // 4), reference=reference)
            found[name].check(model)
    return found


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is not None and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


def guarded_loss(model, ids, guard: RetentionGuard | None, step: int = 0) -> torch.Tensor:
    loss = model(input_ids=ids, labels=ids).loss
    return loss + guard.penalty(model, step)[0] if guard else loss


def train_step(model, optimizer, ids, dtype: torch.dtype, guard: RetentionGuard | None = None, step: int = 0) -> None:
    with autocast(ids, dtype):
        loss = guarded_loss(model, ids, guard, step)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def account_training(name: str, model, optimizer, ids, dtype: torch.dtype, guard=None) -> Measurement:
    """One step with every tensor counted: weights (a guard's reference model too), gradients, AdamW state, saved
    activations."""
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    device = ids.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(ids, dtype):
        loss = guarded_loss(model, ids, guard)
    params = [p for p in model.parameters() if p.requires_grad]
    reference = list(guard.reference.parameters()) if guard and guard.reference is not None else []
    measurement = Measurement(
        name=name,
        trainable=sum(p.numel() for p in params),
        weights=tensor_bytes([*model.parameters(), *reference]),
        activations=tensor_bytes(t for t in saved if not isinstance(t, torch.nn.Parameter)),
    )
    saved.clear()
    loss.backward()
    measurement.gradients = tensor_bytes(p.grad for p in params)
    optimizer.step()
    measurement.optimizer = tensor_bytes(t for state in optimizer.state.values() for t in state.values() if t.dim())
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        measurement.device_peak = torch.cuda.max_memory_allocated(device)
    return measurement


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_training(base, ids, repeats: int, warmup: int, guarded: bool = True) -> list[Measurement]:
    variants, dtype = training_variants(base, guarded), base.dtype
    guard = guards(variants, ids)
    optimizers = {
        n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for n, m in variants.items()
    }
    results = {}
    for name, model in variants.items():
        model.train()
        results[name] = account_training(name, model, optimizers[name], ids, dtype, guard.get(name))
        for _ in range(warmup):
            train_step(model, optimizers[name], ids, dtype, guard.get(name))
    for step in range(repeats):
        for name, model in variants.items():
            synchronize(ids.device)
            start = time.perf_counter()
            train_step(model, optimizers[name], ids, dtype, guard.get(name), step)
            synchronize(ids.device)
            results[name].times.append(time.perf_counter() - start)
    return list(results.values())


@torch.no_grad()
def measure_inference(base, ids, repeats: int, warmup: int, decode_tokens: int) -> list[Measurement]:
    def grow(**kwargs):
        return get_peft_model(copy.deepcopy(base), GrowConfig(k=2, init_weights=False), **kwargs)

    grown = grow(autocast_adapter_dtype=False)  # new weights in the model's dtype
    merged = grow(autocast_adapter_dtype=False)
    merged.load_state_dict(grown.state_dict())
    merged = merged.merge_and_unload()
    switchable = grow(autocast_adapter_dtype=False)
    switchable.load_state_dict(grown.state_dict())
    switchable.merge_adapter()  # merged in place, adapter kept: unmerge_adapter() restores the base bit for bit
    models = {"base": base, "grown (unmerged)": grown, "grown (merge_adapter)": switchable, "merged": merged}
    if base.dtype != torch.float32:  # PEFT's default when loading an adapter: float32 new weights
        upcast = grow()
        upcast.load_state_dict(grown.state_dict())
        models["grown (unmerged, fp32 new weights)"] = upcast
    results = {f"{name} {kind}": Measurement(f"{name} {kind}") for name in models for kind in ("prefill", "decode")}

    def prefill(model):
        return model(input_ids=ids, use_cache=True)

    def decode(model):
        _, cache = cached_forward(model, input_ids=ids[:, :-1])
        token = ids[:, -1:]
        synchronize(ids.device)
        start = time.perf_counter()
        for _ in range(decode_tokens):
            out, cache = cached_forward(model, cache, input_ids=token)
            token = out.logits[:, -1:].argmax(-1)
        synchronize(ids.device)
        return (time.perf_counter() - start) / decode_tokens

    for model in models.values():
        model.eval()
        for _ in range(warmup):
            prefill(model)
            decode(model)
    for _ in range(repeats):
        for name, model in models.items():
            synchronize(ids.device)
            start = time.perf_counter()
            prefill(model)
            synchronize(ids.device)
            results[f"{name} prefill"].times.append(time.perf_counter() - start)
            results[f"{name} decode"].times.append(decode(model))
    return list(results.values())


def mib(count: int) -> str:
    return f"{count / 2**20:,.1f}"


def report(setting: str, training: list[Measurement], inference: list[Measurement], device: torch.device) -> str:
    model_type, kwargs, dtype, batch, length, _ = SETTINGS[setting]
    by_name = {m.name: m for m in training}
    reference, full = by_name["wide-ref"], by_name["full"]
    tokens = batch * length
    cuda = device.type == "cuda"
    lines = [
        f"setting {setting}: {model_type} {kwargs}, {dtype}, batch {batch} x {length} tokens, device {device}",
        "",
        "| training | step (ms, median ± IQR) | tokens/s | vs wide-ref | vs full | trainable | weights MiB "
        "| grads MiB | AdamW MiB | activations MiB | total MiB |" + (" device peak MiB |" if cuda else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for m in training:
        lines.append(
            f"| {m.name} | {m.median * 1e3:.1f} ± {m.spread * 1e3:.1f} | {tokens / m.median:,.0f} "
            f"| {m.ratio(reference)[0]:.2f}x | {m.ratio(full)[0]:.2f}x | {m.trainable:,} | {mib(m.weights)} "
            f"| {mib(m.gradients)} | {mib(m.optimizer)} | {mib(m.activations)} | {mib(m.total_memory)} |"
            + (f" {mib(m.device_peak)} |" if m.device_peak is not None else "")
        )
    lines += guard_table(training, cuda)
    by_name = {m.name: m for m in inference}
    lines += ["", "| inference | time (ms, median ± IQR) | vs merged (median ± IQR) |", "|---|---|---|"]
    for m in inference:
        ratio, spread = m.ratio(by_name[f"merged {m.name.rsplit(' ', 1)[1]}"])
        lines.append(f"| {m.name} | {m.median * 1e3:.2f} ± {m.spread * 1e3:.2f} | {ratio:.2f}x ± {spread:.2f} |")
    lines += ["", "Ratios are medians of per-round ratios: each round times every variant once, in turn."]
    return "\n".join(lines)


def guard_table(training: list[Measurement], cuda: bool) -> list[str]:
    """The retention guard's cost: each guarded variant against the same variant without it."""
    by_name = {m.name: m for m in training}
    if not any(f"{name}+guard" in by_name for name in GUARDED):
        return []
    lines = [
        "",
        "| retention guard (a quarter of the batch) | step vs without (median ± IQR) | memory vs without |"
        + (" device peak vs without |" if cuda else ""),
        "|---|---|---|" + ("---|" if cuda else ""),
    ]
    for name in GUARDED:
        guarded, plain = by_name.get(f"{name}+guard"), by_name.get(name)
        if guarded is None or plain is None:
            continue
        ratio, spread = guarded.ratio(plain)
        peak = f" {guarded.device_peak / plain.device_peak:.2f}x |" if cuda and plain.device_peak else ""
        lines.append(
            f"| {name} | {ratio:.2f}x ± {spread:.2f} | {guarded.total_memory / plain.total_memory:.2f}x |{peak}"
        )
    return lines


def run(setting: str, repeats: int, warmup: int, decode_tokens: int, guarded: bool = True):
    """(training measurements, inference measurements, the input ids) of one setting; `guarded` adds the retention
    guard's variants."""
    base, ids = build_base(setting)
    training = measure_training(base, ids, repeats, warmup, guarded)
    inference = measure_inference(base, ids, repeats, warmup, decode_tokens)
    return training, inference, ids


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--repeats", type=int, default=15, help="measured rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per variant first (default 2)")
    parser.add_argument("--decode-tokens", type=int, default=16, help="tokens per decode measurement (default 16)")
    parser.add_argument("--json", help="also write the raw measurements to this file")
    parser.add_argument("--report", metavar="JSON", help="print the tables of measurements saved with --json; no run")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as handle:
            saved = json.load(handle)
        training, inference = ([Measurement(**m) for m in saved[part]] for part in ("training", "inference"))
        text = report(args.setting, training, inference, torch.device(SETTINGS[args.setting][-1]))
        print(text)
        return text
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    training, inference, ids = run(args.setting, args.repeats, args.warmup, args.decode_tokens)
    text = report(args.setting, training, inference, ids.device)
    print(text)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"training": [asdict(m) for m in training], "inference": [asdict(m) for m in inference]}, handle)
    return text


if __name__ == "__main__":
    main()
