"""A grown model served by llama.cpp: merge, convert to GGUF with llama.cpp's own converter, compare with transformers.

Grows stories260K (examples/data/stories260K) by k=2 in every layer, trains the new weights briefly on tiny
Shakespeare, merges (`merge_and_unload()`, the `pad` layout: a standard llama checkpoint, only wider), and
converts the merged folder with `convert_hf_to_gguf.py` from the llama-cpp-python source distribution. The GGUF
file then runs in llama-cpp-python, and its logits and greedy tokens are compared with transformers on the same
merged model and the same token ids. Nothing here is downloaded: the sdist and the build come from PyPI.

One-time setup (outside the repository; the build compiles llama.cpp with the system compiler and cmake):

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d ~/.cache/peft-grow/llamacpp
    CMAKE_BUILD_PARALLEL_LEVEL=2 pip install ~/.cache/peft-grow/llamacpp/llama_cpp_python-0.3.36.tar.gz

Then (about a minute on 2 CPU cores; not run in CI):

    python examples/llama_cpp_gguf.py
    python examples/llama_cpp_gguf.py --outtype f16 --json result.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from peft_grow import GrowConfig  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
BASE = DATA / "stories260K"
CACHE = Path(os.environ.get("PEFT_GROW_CACHE", Path.home() / ".cache" / "peft-grow")) / "llamacpp"
PROMPT = "Once upon a time, there was a little girl named"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def grown_and_merged(steps: int, out: Path) -> None:
    """A grown stories260K, trained briefly on Shakespeare, merged and saved as a standard checkpoint in `out`."""
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32), GrowConfig(k=2))
    ids = torch.tensor(tokenizer((DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000])["input_ids"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 129, (8,))
        batch = torch.stack([ids[s : s + 128] for s in starts])
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    merged = model.merge_and_unload().eval()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copy(BASE / "tokenizer.model", out / "tokenizer.model")  # the converter reads the SentencePiece model


def converter(sdist: Path, into: Path) -> Path:
    """Unpack llama.cpp's converter (the script, its `conversion` package and its gguf-py) from the sdist; the path
    of convert_hf_to_gguf.py."""
    with tarfile.open(sdist) as archive:
        members = [
            m
            for m in archive.getmembers()
            if "/vendor/llama.cpp/convert_hf_to_gguf.py" in m.name
            or any(f"/vendor/llama.cpp/{package}/" in m.name for package in ("gguf-py", "conversion"))
        ]
        archive.extractall(into, members=members, filter="data")
    return next(into.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))


def convert(script: Path, merged: Path, gguf: Path, outtype: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(script.parent / "gguf-py"))  # the converter's own gguf, not PyPI's
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, str(script), str(merged), "--outfile", str(gguf), "--outtype", outtype],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        fail(f"convert_hf_to_gguf.py failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def greedy_transformers(model, prompt: list[int], new: int) -> tuple[np.ndarray, list[int]]:
    """Logits of the prompt's positions and `new` greedy tokens, recomputed over the whole sequence each step."""
    tokens = list(prompt)
    with torch.no_grad():
        prompt_logits = model(input_ids=torch.tensor([tokens])).logits[0].numpy()
        for _ in range(new):
            tokens.append(int(model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    return prompt_logits, tokens[len(prompt) :]


def greedy_llama_cpp(gguf: Path, prompt: list[int], new: int) -> tuple[np.ndarray, list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    llm.eval(prompt)
    prompt_logits = np.array(llm.scores[: len(prompt)])
    tokens = []
    for _ in range(new):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([tokens[-1]])
    return prompt_logits, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist", type=Path, default=CACHE / "llama_cpp_python-0.3.36.tar.gz")
    parser.add_argument("--work", type=Path, default=CACHE / "work", help="scratch folder (replaced)")
    parser.add_argument("--steps", type=int, default=30, help="training steps of the new weights (default 30)")
    parser.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16"], help="GGUF weights (default f32)")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    if not args.sdist.is_file():  # both prerequisites before any work
        fail(f"no llama-cpp-python sdist at {args.sdist}. Fetch it with the pip download line in this script's help.")
    if importlib.util.find_spec("llama_cpp") is None:
        fail("llama_cpp is not installed. Build it from the sdist with the pip install line in this script's help.")
    shutil.rmtree(args.work, ignore_errors=True)
    merged_dir, gguf = args.work / "merged", args.work / f"merged-{args.outtype}.gguf"
    grown_and_merged(args.steps, merged_dir)
    script = converter(args.sdist, args.work / "sdist")
    seconds = convert(script, merged_dir, gguf, args.outtype)

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    prompt = [tokenizer.bos_token_id, *tokenizer(PROMPT, add_special_tokens=False)["input_ids"]]
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    hf_logits, hf_tokens = greedy_transformers(model, prompt, args.new_tokens)
    cpp_logits, cpp_tokens = greedy_llama_cpp(gguf, prompt, args.new_tokens)

    difference = float(np.abs(hf_logits - cpp_logits).max())
    scale = float(np.abs(hf_logits).max())
    same = next((i for i, (a, b) in enumerate(zip(hf_tokens, cpp_tokens, strict=True)) if a != b), len(hf_tokens))
    figures = {
        "merged_intermediate_size": model.config.intermediate_size,
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "convert_seconds": round(seconds, 1),
        "prompt_tokens": len(prompt),
        "max_abs_logit_difference": difference,
        "max_abs_logit": scale,
        "same_argmax_on_prompt": int((hf_logits.argmax(-1) == cpp_logits.argmax(-1)).sum()),
        "greedy_tokens_equal": same,
        "greedy_tokens": len(hf_tokens),
        "transformers_text": tokenizer.decode(hf_tokens),
        "llama_cpp_text": tokenizer.decode(cpp_tokens),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
