"""Function vectors (Todd et al., ICLR 2024), as the paper uses them (section 4.5, appendix B).

Does fine-tuning disturb the attention heads that carry a model's in-context task representation? For an
in-context-learning task (prompts of "Q: x / A: y" pairs ending in a query):

1. mean head activations: each attention head's output at the final token, averaged over clean prompts. A
   head's output is its slice of the input of the attention output projection (`o_proj`, `c_proj`, ...);
2. causal indirect effect (CIE) of each head: on prompts whose labels are shuffled, replace that head's output
   at the final token by its clean mean and measure the rise in the probability of the correct answer's first
   token, averaged over prompts;
3. the function vector: the sum, over the top-k heads by CIE, of their mean outputs mapped through the output
   projection into the residual stream (a vector of the hidden size);
4. its zero-shot effect: added to the hidden state after one decoder layer at the final token of a prompt that
   holds only the query, does it raise the accuracy of the answer's first token?

`compare(a, b)` gives the paper's Table 1 figures: how many of the top-10 heads two models share, and the
cosine similarity of their function vectors. Everything works on a `PeftModel`: growth changes MLPs only, so the
heads are the base model's, but what feeds them is not.

The tasks (`TASKS`) are built from a word list in the package (data/function_vector_words.txt: the 400 most
frequent lower-case words of 3 to 8 letters in the tiny Shakespeare excerpt shipped with the examples, public
domain text): capitalise, upper-case, first letter, last letter, copy. Only lower-case words are listed, so
every answer is determined by its query.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..sequences import cached_forward

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

WORDS_FILE = Path(__file__).resolve().parent / "data" / "function_vector_words.txt"
TASKS: dict[str, Callable[[str], str]] = {
    "capitalize": str.capitalize,
    "uppercase": str.upper,
    "first_letter": lambda word: word[0],
    "last_letter": lambda word: word[-1],
    "copy": lambda word: word,
}
OUTPUT_PROJECTIONS = r"(self_attn\.o_proj|attn\.c_proj|self_attn\.dense|attention\.dense|attn\.out_proj)$"


def task_pairs(task: str, words: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(query, answer) pairs of a task over the packaged word list (or `words`)."""
    if task not in TASKS:
        raise ValueError(f"Unknown function-vector task {task!r}: expected one of {sorted(TASKS)}.")
    if words is None:
        words = WORDS_FILE.read_text(encoding="utf-8").split()
    return [(word, TASKS[task](word)) for word in words]


@dataclass(frozen=True)
class Prompt:
    text: str  # shots and the query, ending right before the answer
    answer: str


def icl_prompts(
    pairs: Sequence[tuple[str, str]], n_prompts: int, shots: int = 5, seed: int = 0, shuffle_labels: bool = False
) -> list[Prompt]:
    """Prompts "Q: x\\nA: y\\n\\n" * shots + "Q: x\\nA:", the answer to follow after a space.

    shuffle_labels=True gives the corrupted prompts of the causal analysis: the same prompts (for the same seed)
    with the shots' answers rotated by a random shift, so that no demonstration shows the task any more; the query
    and its answer are unchanged. shots=0 gives zero-shot prompts (the query alone).
    """
    if len(pairs) < shots + 1:
        raise ValueError(f"Expected at least {shots + 1} (query, answer) pairs for {shots} shots, found {len(pairs)}.")
    rng, shifts = random.Random(seed), random.Random(seed + 1)  # corrupting draws apart: the same prompts either way
    prompts = []
    for _ in range(n_prompts):
        chosen = rng.sample(list(pairs), shots + 1)
        demos, (query, answer) = chosen[:shots], chosen[shots]
        answers = [a for _, a in demos]
        if shuffle_labels and shots > 1:
            shift = shifts.randrange(1, shots)
            answers = answers[shift:] + answers[:shift]
        text = "".join(f"Q: {x}\nA: {y}\n\n" for (x, _), y in zip(demos, answers, strict=True))
        prompts.append(Prompt(f"{text}Q: {query}\nA:", answer))
    return prompts


# ---------------------------------------------------------------------------------------------- model access


@dataclass(frozen=True)
class Heads:
    """The attention output projections of a model, one per layer, and how their input splits into heads."""

    projections: list[nn.Module]
    num_heads: int
    head_dim: int


def find_heads(model: nn.Module, pattern: str = OUTPUT_PROJECTIONS) -> Heads:
    """The output projection of every attention layer (the module whose input holds the heads side by side).

    Under PEFT a projection may be wrapped (LoRA); the wrapper, not its `base_layer`, is taken, since it is what
    the model calls.
    """
    found = [(name, m) for name, m in model.named_modules() if re.search(pattern, name)]
    if not found:
        raise ValueError(
            f"Found no attention output projection matching {pattern!r} in {type(model).__name__}; pass the "
            "regular expression of its name (e.g. r'self_attn\\.o_proj$')."
        )
    config = model.config
    num_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    width = _in_features(found[0][1])
    if width != num_heads * head_dim:
        raise ValueError(
            f"{found[0][0]} takes {width} features, expected num_attention_heads * head_dim = {num_heads} * "
            f"{head_dim}; the model does not lay out its heads as this analysis assumes."
        )
    return Heads([m for _, m in found], num_heads, head_dim)


def _in_features(module: nn.Module) -> int:
    if hasattr(module, "in_features"):
        return module.in_features
    base = getattr(module, "base_layer", module)
    weight = base.weight
    return weight.shape[0] if type(base).__name__ == "Conv1D" else weight.shape[1]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder layers (the longest ModuleList whose length is num_hidden_layers)."""
    target = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == target:
            return module
    raise ValueError(f"Found no stack of {target} decoder layers in {type(model).__name__}.")


@contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _encode(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], device: torch.device
) -> tuple[dict, torch.Tensor]:
    """Left-padded inputs (the final token of every row at position -1) and each answer's first token."""
    ids = [tokenizer(p.text)["input_ids"] for p in prompts]
    answers = [tokenizer(" " + p.answer, add_special_tokens=False)["input_ids"][0] for p in prompts]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
    return inputs, torch.tensor(answers, device=device)


# ------------------------------------------------------------------------------------------------ analysis


@torch.no_grad()
def mean_head_activations(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], heads: Heads
) -> torch.Tensor:
    """[layers, heads, head_dim]: each head's output at the final token, averaged over `prompts`."""
    device = next(model.parameters()).device
    inputs, _ = _encode(tokenizer, prompts, device)
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0][:, -1].float().mean(0).view(heads.num_heads, heads.head_dim))

    with _hooks([p.register_forward_pre_hook(capture) for p in heads.projections]):
        model(**inputs)
    return torch.stack(captured)


@torch.no_grad()
def causal_indirect_effects(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    corrupted: Sequence[Prompt],
    means: torch.Tensor,
    heads: Heads,
) -> torch.Tensor:
    """[layers, heads]: the mean rise in the correct answer's probability on `corrupted` prompts when one head's
    output at the final token is replaced by its clean mean (`means`), one head at a time.

    Patching the final token leaves every earlier position as it was, so the prompts' prefix runs once and each
    patched run computes the final token alone on a copy of the prefix's key/value cache.
    """
    device = next(model.parameters()).device
    inputs, answers = _encode(tokenizer, corrupted, device)
    _, prefix = cached_forward(model, **{k: v[:, :-1] for k, v in inputs.items()}, logits_to_keep=1)
    last = {"input_ids": inputs["input_ids"][:, -1:], "position_ids": inputs["position_ids"][:, -1:]}
    last["attention_mask"] = inputs["attention_mask"]

    def final_token_probs() -> torch.Tensor:
        logits = cached_forward(model, copy.deepcopy(prefix), **last, logits_to_keep=1)[0].logits
        return logits[:, -1].float().softmax(-1).gather(1, answers[:, None]).squeeze(1)

    baseline = final_token_probs()
    effects = torch.zeros(len(heads.projections), heads.num_heads)
    for layer, projection in enumerate(heads.projections):
        for head in range(heads.num_heads):
            span = slice(head * heads.head_dim, (head + 1) * heads.head_dim)

            def patch(
                module: nn.Module, args: tuple[Any, ...], span: slice = span, value: torch.Tensor = means[layer, head]
            ) -> tuple[Any, ...]:
                x = args[0].clone()
                x[:, -1, span] = value.to(x.dtype)
                return (x, *args[1:])

            with _hooks([projection.register_forward_pre_hook(patch)]):
                effects[layer, head] = (final_token_probs() - baseline).mean().item()
    return effects


def top_heads(effects: torch.Tensor, k: int = 10) -> list[tuple[int, int]]:
    """The (layer, head) pairs of the k largest causal indirect effects, largest first."""
    order = effects.flatten().argsort(descending=True)[:k]
    return [divmod(int(i), effects.shape[1]) for i in order]


@torch.no_grad()
def function_vector(means: torch.Tensor, heads: Heads, chosen: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The sum of the chosen heads' mean outputs mapped into the residual stream by their output projection
    (the projection's bias left out: it does not belong to any head)."""
    total = None
    for layer, head in chosen:
        projection = heads.projections[layer]
        weight = next(projection.parameters())
        z = torch.zeros(1, heads.num_heads * heads.head_dim, device=weight.device, dtype=weight.dtype)
        z[0, head * heads.head_dim : (head + 1) * heads.head_dim] = means[layer, head].to(weight.dtype)
        vector = (projection(z) - projection(torch.zeros_like(z)))[0].float()
        total = vector if total is None else total + vector
    return total.cpu()


@torch.no_grad()
def zero_shot_accuracy(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    vector: torch.Tensor | None = None,
    layer: int = 0,
) -> float:
    """Top-1 accuracy of the answer's first token; with `vector`, added to the output of decoder layer `layer`
    at the final token (Todd et al. add it to a layer about a third of the way up)."""
    device = next(model.parameters()).device
    inputs, answers = _encode(tokenizer, prompts, device)
    handles = []
    if vector is not None:

        def add(
            module: nn.Module, args: tuple[Any, ...], output: torch.Tensor | tuple[Any, ...]
        ) -> torch.Tensor | tuple[Any, ...]:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[:, -1] += vector.to(hidden.device, hidden.dtype)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handles.append(decoder_layers(model)[layer].register_forward_hook(add))
    with _hooks(handles):
        predicted = model(**inputs).logits[:, -1].argmax(-1)
    return (predicted == answers).float().mean().item()


@dataclass
class FunctionVectorResult:
    """What `analyze` found for one model and task."""

    task: str
    means: torch.Tensor  # [layers, heads, head_dim]
    effects: torch.Tensor  # [layers, heads]
    heads: list[tuple[int, int]]  # top-k by effect
    vector: torch.Tensor  # [hidden]
    icl_accuracy: float  # clean few-shot prompts
    zero_shot: float  # the query alone
    zero_shot_with_vector: float  # the query alone, the function vector added at `layer`
    layer: int


def analyze(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    n_prompts: int = 32,
    shots: int = 5,
    k: int = 10,
    layer: int | None = None,
    seed: int = 0,
    heads: Heads | None = None,
) -> FunctionVectorResult:
    """Means, causal effects, top-k heads and function vector of `task`, and the vector's zero-shot effect.

    `layer` (where the vector is added) defaults to a third of the way up, as Todd et al. found best. The model is
    put in eval mode (no dropout) and given back in the mode it came in.
    """
    heads = heads or find_heads(model)
    pairs = task_pairs(task)
    clean = icl_prompts(pairs, n_prompts, shots, seed)
    corrupted = icl_prompts(pairs, n_prompts, shots, seed, shuffle_labels=True)
    zero = icl_prompts(pairs, n_prompts, 0, seed + 1)
    layer = len(heads.projections) // 3 if layer is None else layer
    was_training = model.training
    model.eval()
    try:
        means = mean_head_activations(model, tokenizer, clean, heads)
        effects = causal_indirect_effects(model, tokenizer, corrupted, means, heads)
        chosen = top_heads(effects, k)
        vector = function_vector(means, heads, chosen)
        return FunctionVectorResult(
            task,
            means,
            effects,
            chosen,
            vector,
            icl_accuracy=zero_shot_accuracy(model, tokenizer, clean),
            zero_shot=zero_shot_accuracy(model, tokenizer, zero),
            zero_shot_with_vector=zero_shot_accuracy(model, tokenizer, zero, vector, layer),
            layer=layer,
        )
    finally:
        model.train(was_training)


def compare(a: FunctionVectorResult, b: FunctionVectorResult) -> tuple[int, float]:
    """The paper's Table 1: (how many top heads the two share, cosine similarity of the function vectors)."""
    shared = len(set(a.heads) & set(b.heads))
    cosine = torch.nn.functional.cosine_similarity(a.vector, b.vector, dim=0).item()
    return shared, cosine
