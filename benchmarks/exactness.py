"""Function preservation at initialisation, per architecture and dtype: the table in docs/method.md.

For each architecture's tiny random model (the same ones the tests build), prints the worst float32 logit
difference over k in {2, 3, 4}, both modes and both inits; whether bfloat16 with k=2 is bit-identical
(new weights in bfloat16); and the worst bfloat16 difference with PEFT's default float32 new weights.

    python -m benchmarks.exactness            # all architectures, about half a minute on 2 CPU cores

With --model-dir, a real checkpoint in bfloat16 instead (e.g. one fetched by benchmarks/fetch_models.py), on
--device: for k = 2 and 3 in both modes, whether the grown model's logits are bit-identical to the base's (new
weights in bfloat16), the largest difference, and that of the merged model:

    python -m benchmarks.exactness --model-dir ~/.cache/peft-grow/models/smollm2-135m/hf --device cuda
"""

import argparse
import copy
import warnings

import torch
from peft import get_peft_model

from peft_grow import GrowConfig
from peft_grow.testing import ALL_ARCHITECTURES, logits, sample_inputs, tiny_model  # the test suite's tiny model zoo

SETTINGS = [(mode, init) for mode in ("freeze", "train") for init in ("copy", "zero")]


def worst_difference(base, inputs, ks, **kwargs) -> tuple[float, bool]:
    expected = logits(base, inputs).float()
    worst, identical = 0.0, True
    for k in ks:
        for mode, init in SETTINGS:
            grown = get_peft_model(copy.deepcopy(base), GrowConfig(k=k, mode=mode, init=init), **kwargs)
            out = logits(grown, inputs).float()
            worst = max(worst, (out - expected).abs().max().item())
            identical &= torch.equal(out, expected)
    return worst, identical


def real_model(path: str, device: str) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(device).eval()
    ids = torch.randint(10, 1000, (4, 96), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        scale = expected.float().abs().max().item()
        print(
            f"{path} on {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), bfloat16, "
            f"4 x 96 random tokens, largest |logit| {scale:.1f}"
        )
        print("| k | mode | bit-identical | max diff | merged: max diff |")
        print("|---|---|---|---|---|")
        for k in (2, 3):
            for mode in ("freeze", "train"):
                config = GrowConfig(k=k, mode=mode)
                grown = get_peft_model(copy.deepcopy(base), config, autocast_adapter_dtype=False).eval()
                out = grown(input_ids=ids).logits
                merged = grown.merge_and_unload()(input_ids=ids).logits
                diff = (out.float() - expected.float()).abs().max().item()
                merged_diff = (merged.float() - expected.float()).abs().max().item()
                same = "yes" if torch.equal(out, expected) else "no"
                print(f"| {k} | {mode} | {same} | {diff:.3g} | {merged_diff:.3g} |", flush=True)


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation notices
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=ALL_ARCHITECTURES, help="architectures (default: all)")
    parser.add_argument("--model-dir", help="a real checkpoint to check in bfloat16 instead of the tiny models")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (with --model-dir; default cpu)")
    args = parser.parse_args()
    if args.model_dir:
        return real_model(args.model_dir, args.device)
    print(
        "| architecture | fp32 max diff (k=2,3,4) | bf16 k=2 bit-identical | bf16, fp32 new weights: max diff (k=2,3) |"
    )
    print("|---|---|---|---|")
    for name in args.names:
        base = tiny_model(name)
        fp32, _ = worst_difference(base, sample_inputs(base), ks=(2, 3, 4))
        base = tiny_model(name, dtype=torch.bfloat16)
        inputs = sample_inputs(base)
        _, identical = worst_difference(base, inputs, ks=(2,), autocast_adapter_dtype=False)
        upcast, _ = worst_difference(base, inputs, ks=(2, 3))
        print(f"| {name} | {fp32:.1e} | {'yes' if identical else 'NO'} | {upcast:.1e} |", flush=True)


if __name__ == "__main__":
    main()
