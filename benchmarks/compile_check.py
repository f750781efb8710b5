"""Is a grown model torch.compile friendly? Counts graphs and graph breaks with torch._dynamo.explain and runs
one compiled training step (forward and backward), for G-Freeze and G-Train on a small llama-style model.

    python benchmarks/compile_check.py        # about a minute on 2 CPU cores (compilation dominates)
"""

import warnings

import torch
import torch._dynamo as dynamo
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging

from peft_grow import GrowConfig


def main() -> None:
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


if __name__ == "__main__":
    main()
