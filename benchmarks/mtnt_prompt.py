"""Which MTNT prompt a base model can translate with: SacreBLEU of the base model on sentences spread over the MTNT
English-French test set, zero-shot and one-shot (`mtnt_examples(path, one_shot=...)`), with a few first lines of
each. The real-model benchmark's `mtnt` task uses the one-shot prompt because of this comparison.

    python -m benchmarks.mtnt_prompt --model gemma3-270m --data ../shared/data/tasks --sentences 48
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from peft_grow import evaluation as ev  # noqa: E402

from .real_models_setup import MODELS, default_cache  # noqa: E402
from .real_models_tasks import TASKS, spread  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help=f"{', '.join(MODELS)}, or any name with --model-dir")
    parser.add_argument("--model-dir", type=Path, help="the checkpoint (default: <cache>/<model>/hf)")
    parser.add_argument("--data", type=Path, required=True, help="the task data folder (holding mtnt/)")
    parser.add_argument("--sentences", type=int, default=48, help="test sentences, spread over the file")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    folder = args.model_dir or default_cache() / args.model / "hf"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    path = args.data / TASKS["mtnt"].test
    for one_shot in (False, True):
        examples = spread(ev.mtnt_examples(path, one_shot=one_shot), args.sentences)
        start = time.perf_counter()
        score = ev.score_generation(model, tokenizer, examples, "bleu", TASKS["mtnt"].max_new_tokens, args.batch)
        seconds = time.perf_counter() - start
        name = "one-shot" if one_shot else "zero-shot"
        print(f"{name}: {score:.1f} BLEU on {len(examples)} sentences ({seconds:.0f} s)")
        firsts = ev.generate_answers(model, tokenizer, [e.prompt for e in examples[:3]], 96, 3, stop=("\n",))
        for example, line in zip(examples, firsts, strict=False):
            print(f"  {example.prompt.rpartition('English: ')[2].splitlines()[0][:60]!r} -> {line.strip()[:80]!r}")


if __name__ == "__main__":
    main()
