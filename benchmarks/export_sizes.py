"""Merged-checkpoint sizes and load results per layout, on the real stories260K model (docs/sharing.md).

For growth of every layer and of some layers, k = 2 and 3, exports the merged model in both layouts and
reports the parameter count, the bytes on disk, whether plain `AutoModelForCausalLM.from_pretrained` loads it,
and the max |logit difference| between the reloaded checkpoint and the adapter model.

    python -m benchmarks.export_sizes        # a few seconds on 2 CPU cores
"""

import tempfile
import warnings
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from transformers.utils import logging

from peft_grow import GrowConfig, load_merged, save_merged

MODEL = Path(__file__).resolve().parents[1] / "examples" / "data" / "stories260K"


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    ids = torch.tensor([[1, 403, 261, 378, 414, 275, 260, 430, 289, 261]])
    base_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(MODEL).parameters())
    print(f"base: stories260K, {base_params:,} parameters, float32\n")
    print(
        "| layers grown | k | layout | parameters | on disk | plain from_pretrained "
        "| max \\|diff\\| vs adapter (max \\|logit\\|) |"
    )
    print("|---|---|---|---|---|---|---|")
    for layers in (None, [3, 4]):
        for k in (2, 3):
            for layout in ("pad", "per-layer"):
                torch.manual_seed(0)
                model = get_peft_model(
                    AutoModelForCausalLM.from_pretrained(MODEL), GrowConfig(layers=layers, k=k, init_weights=False)
                )
                with torch.no_grad():
                    expected = model(input_ids=ids).logits
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "merged"
                    merged = save_merged(model, out, layout=layout)
                    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
                    try:
                        loaded, plain = AutoModelForCausalLM.from_pretrained(out), "yes"
                    except (RuntimeError, ValueError):  # size mismatch: the per-layer layout needs load_merged
                        loaded, plain = load_merged(out), "no: peft_grow.load_merged"
                    with torch.no_grad():
                        diff = (loaded(input_ids=ids).logits - expected).abs().max().item()
                params = sum(p.numel() for p in merged.parameters())
                print(
                    f"| {'all 5' if layers is None else '3, 4'} | {k} | {layout} | {params:,} | {size / 1024:,.0f} KiB "
                    f"| {plain} | {diff:.1e} ({expected.abs().max().item():.1f}) |"
                )


if __name__ == "__main__":
    main()
