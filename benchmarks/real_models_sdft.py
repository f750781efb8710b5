"""TRL's `SDFTTrainer` (on-policy self-distillation, Shenfeld et al. 2026, arXiv 2601.19897) on a G-Freeze adapter,
as one run of the real-model benchmark (`--runs sdft@1e-4`): the field's newest method that claims less
forgetting, trained and evaluated as the runner's other methods are.

At each step the student (the grown model) writes one completion to each of the batch's training prompts, and the
loss pulls its next-token distribution on those tokens towards the teacher's: the base model (the adapter
disabled, which for GROW is the pretrained model exactly) shown the demonstration. The models here are base models,
not chat models, so the demonstration is shown one-shot: the teacher reads the prompt with its answer, then the
prompt again (SDFT_SETTINGS), where the paper's chat teacher reads "This is an example for a response ...".

The rest is the runner's: the same training examples, steps, batch, evaluations, AdamW without weight decay at a
constant rate (passed in, so that checkpoints are the runner's own), gradients clipped at 1.0. Completions are as
long as the longest training answer. SDFT draws its own order of examples, and the curve's `train_loss` is its
distillation loss, not the answer loss. A stopped run resumes from the weights and AdamW moments of its last
evaluation; its sampler and completions are then drawn from seed + step, so a resumed run is reproducible but not
identical to an unbroken one.

Whether the teacher knows the answers is checked apart, on the base model alone (a minute on CPU):

    python -m benchmarks.real_models_sdft --model gemma3-270m --data ../shared/data/tasks   # student and teacher
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback

from peft_grow import evaluation as ev

from .real_models_scores import task_score
from .real_models_setup import MODELS, default_data, evaluates_at, load, require_data
from .real_models_tasks import TASKS, read_examples, spread

# SDFTTrainer warns that a model passed with its adapter may make the `base` teacher differ from the initial
# student; for GROW they are the same function (function preservation), so the warning does not apply here.
logging.getLogger("trl.experimental.sdft.sdft_trainer").setLevel(logging.ERROR)

# recorded in the run's settings; the teacher's privileged_context is the prompt and its answer
SDFT_SETTINGS = {"teacher_prompt_template": "{privileged_context}\n\n{prompt}", "num_generations": 1}


def privileged_context(example: ev.Example) -> str:
    return f"{example.prompt} {example.answer}"


def demonstrations(setup) -> Dataset:
    """The training examples as SDFT reads them: the prompt, and the prompt answered as the teacher's context."""
    examples = read_examples(setup.data, setup.task, "train")
    return Dataset.from_dict(
        {"prompt": [e.prompt for e in examples], "privileged_context": [privileged_context(e) for e in examples]}
    )


def as_teacher_reads(example: ev.Example) -> ev.Example:
    """The example with the prompt the teacher reads (SDFT_SETTINGS' template), the answer unchanged."""
    prompt = SDFT_SETTINGS["teacher_prompt_template"].format(
        privileged_context=privileged_context(example), prompt=example.prompt
    )
    return dataclasses.replace(example, prompt=prompt)


class Evaluations(TrainerCallback):
    """The runner's evaluations (with their partial results, checkpoints and logs) at the runner's steps."""

    def __init__(self, args, done: int, evaluated: Callable[[int, list, list], bool]):
        self.args, self.done, self.evaluated = args, done, evaluated
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" not in (logs or {}):  # the summary logged once training ends
            return
        self.losses.append(logs["loss"])  # logging_steps=1: this step's loss
        step = self.done + state.global_step
        if not evaluates_at(self.args, step):
            return
        if not self.evaluated(step, self.losses, []):
            control.should_training_stop = True
        self.losses = []


def train_sdft(setup, run, model, optimizer, done: int, evaluated: Callable[[int, list, list], bool]) -> None:
    """Train `run` (its model built as G-Freeze on every layer, its optimizer resumed to step `done`) with
    SDFTTrainer; `evaluated(step, losses, kls)` is the runner's evaluation, False once the run diverged."""
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer  # experimental in TRL: imported where it is used

    args = setup.args
    if setup.tokenizer.pad_token is None:
        setup.tokenizer.pad_token = setup.tokenizer.eos_token
    with tempfile.TemporaryDirectory() as scratch:  # SDFTConfig wants an output folder; nothing is saved there
        config = SDFTConfig(
            output_dir=scratch,
            max_steps=args.steps - done,
            per_device_train_batch_size=args.batch,
            num_generations=SDFT_SETTINGS["num_generations"],
            max_prompt_length=args.max_len,
            max_completion_length=max(len(e.answer) for e in setup.train),
            teacher_prompt_template=SDFT_SETTINGS["teacher_prompt_template"],
            learning_rate=run.lr,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            seed=run.seed + done,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=setup.device.type == "cpu",
            bf16=args.dtype == "bf16-autocast",
        )
        trainer = SDFTTrainer(
            model=model,  # already grown: the teacher is this model with its adapter disabled, the base exactly
            args=config,
            train_dataset=demonstrations(setup),
            processing_class=setup.tokenizer,
            optimizers=(optimizer, None),
        )
        trainer.remove_callback(PrinterCallback)  # the runner logs its own points
        trainer.add_callback(Evaluations(args, done, evaluated))
        trainer.train()


def main(argv: list[str] | None = None) -> None:
    """Print the base model's score on training examples as the student reads them and as the teacher does: SDFT
    can only teach what its teacher answers."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", required=True, help=f"{', '.join(MODELS)}, or any name with --model-dir")
    parser.add_argument("--model-dir", type=Path, help="the base checkpoint (default: <cache>/<model>/hf)")
    parser.add_argument("--task", choices=sorted(TASKS), default="qasc-facts")
    parser.add_argument("--data", type=Path, default=default_data(), help=f"task data folder (default ${ev.DATA_ENV})")
    parser.add_argument("--limit", type=int, default=40, help="training examples, spread over the file")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    require_data(parser, args.data)
    tokenizer, model = load(args)
    examples = spread(read_examples(args.data, args.task, "train"), args.limit)
    for reader, shown in (("student", examples), ("teacher", [as_teacher_reads(e) for e in examples])):
        score = task_score(model.eval(), tokenizer, shown, args.task, args.batch)
        print(f"{args.model} {args.task}, {len(shown)} training examples as the {reader} reads them: "
              f"score {score['score']:.3f}, first answers {score.get('sample')}")  # fmt: skip


if __name__ == "__main__":
    main()
