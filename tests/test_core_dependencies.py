"""`import peft_grow` and the method itself need only torch, peft, transformers and safetensors; every other
feature names the extra that installs it. Each check runs in a fresh interpreter where the optional packages
cannot be imported (a finder at the front of sys.meta_path refuses them), as in an environment without them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from peft_grow._extras import EXTRAS

OPTIONAL = sorted({*EXTRAS, "evaluate", "bitsandbytes", "sentencepiece", "gguf"})

# None in sys.modules is Python's own "not importable": `import x` raises ModuleNotFoundError and
# importlib.util.find_spec (which transformers uses to probe optional packages) answers None.
BLOCK = f"""
import sys
sys.modules.update(dict.fromkeys({OPTIONAL!r}))
"""


def run_without_extras(code: str) -> subprocess.CompletedProcess:
    env_code = BLOCK + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", env_code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PEFT_GROW_NO_AUTOLOAD": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.slow
def test_the_method_works_with_the_core_dependencies_alone(tmp_path):
    result = run_without_extras(f"""
        import sys
        import torch
        from peft import PeftModel, get_peft_model
        from transformers import AutoModelForCausalLM, LlamaConfig
        import peft_grow
        from peft_grow import GrowConfig, load_merged, save_merged
        import peft_grow.evaluation, peft_grow.analysis, peft_grow.io, peft_grow.cli, peft_grow.training  # no extras

        config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=2, vocab_size=32)
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config)
        ids = torch.tensor([[1, 2, 3, 4]])
        before = base(ids).logits
        model = get_peft_model(base, GrowConfig(layers=[1]))
        assert torch.allclose(model(ids).logits, before, atol=1e-5)
        model.save_pretrained({str(tmp_path / "adapter")!r})
        torch.manual_seed(0)
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_config(config), {str(tmp_path / "adapter")!r})
        assert torch.allclose(loaded(ids).logits, before, atol=1e-5)
        save_merged(loaded, {str(tmp_path / "merged")!r})
        assert torch.allclose(load_merged({str(tmp_path / "merged")!r})(ids).logits, before, atol=1e-5)
        from peft_grow.training import RetentionGuard  # the guard in a torch loop needs no extra either
        penalty, kl = RetentionGuard(torch.tensor([[1, 2, 3, 4, 5]]), weight=1.0).penalty(model, 0)
        assert kl.item() < 1e-6
        imported = [name for name in {OPTIONAL!r} if sys.modules.get(name) is not None]
        assert not imported, imported
        print("ok")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("code", "extra", "package"),
    [
        ("from peft_grow.cli import main; main(['--help'])", "cli", "typer"),
        ("from peft_grow.training import GuardedSFTTrainer", "trl", "trl"),
        ("from peft_grow.evaluation import bleu; bleu(['a'], ['a'])", "eval", "sacrebleu"),
        ("from peft_grow.evaluation import task_manager; task_manager('.')", "eval", "lm-eval"),
        (
            "from peft_grow.analysis import UpdateRankRecorder; UpdateRankRecorder().plot('x.png')",
            "plots",
            "matplotlib",
        ),
    ],
)
def test_a_feature_without_its_extra_names_the_extra_to_install(code, extra, package):
    result = run_without_extras(code)
    assert result.returncode != 0
    assert f"pip install 'peft-grow[{extra}]'" in result.stderr, result.stderr[-2000:]
    assert package in result.stderr
    if extra == "cli":  # the command line answers in one line, without a traceback
        assert result.returncode == 2 and "Traceback" not in result.stderr
