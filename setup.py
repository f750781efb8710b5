"""The one build step pyproject.toml cannot express: `peft_grow_autoload.pth` at the root of site-packages.

Everything else is in pyproject.toml. The .pth file runs `_peft_grow_autoload.install()` at interpreter start, so
that grown adapters load without `import peft_grow` (docs/sharing.md, "Loading without `import peft_grow`").

setuptools has no metadata for a file at the root of site-packages: `data_files` go under the environment's
prefix, not site-packages, and package data stays inside a package. The build sub-command below writes it:

* wheel (`pip install .`, `python -m build`): into `build_lib`, whose whole content becomes the wheel's root,
  the same way pytest-socket and others ship their .pth files;
* editable wheel (`pip install -e .`, PEP 660): setuptools discards `build_lib` there and points the `install`
  command at the unpacked editable wheel instead (`editable_wheel._configure_build`, setuptools >= 64), so the
  file is written there. Should a later setuptools change that, the build stops with an error naming this file
  rather than quietly installing without the hook; tests/test_autoload.py builds both wheels and checks them.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build import build

PTH_NAME = "peft_grow_autoload.pth"
# One line; `site` executes lines that start with "import". The off switch is read before anything is imported.
PTH_LINE = (
    'import os; os.environ.get("PEFT_GROW_NO_AUTOLOAD", "") in ("", "0") '
    'and __import__("_peft_grow_autoload").install()\n'
)


class build_autoload_pth(Command):
    """Write peft_grow_autoload.pth where the wheel (or editable wheel) takes its root files from."""

    description = f"write {PTH_NAME} at the root of the wheel"
    user_options: list = []

    def initialize_options(self) -> None:
        self.build_lib = None
        self.editable_mode = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build_py", ("build_lib", "build_lib"))

    def run(self) -> None:
        targets = [Path(self.build_lib)]
        if self.editable_mode:
            unpacked = Path(self.get_finalized_command("install").install_lib)
            if not any(unpacked.glob("*.dist-info")):
                raise RuntimeError(
                    f"setup.py: cannot find the unpacked editable wheel to put {PTH_NAME} in (install_lib is "
                    f"{unpacked}, which holds no .dist-info): this setuptools builds editable wheels differently. "
                    "Install without -e, or update build_autoload_pth in setup.py."
                )
            targets.append(unpacked)
        for folder in targets:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / PTH_NAME).write_text(PTH_LINE, encoding="utf-8")

    def get_outputs(self) -> list[str]:
        return [str(Path(self.build_lib) / PTH_NAME)]

    def get_output_mapping(self) -> dict[str, str]:
        return {}

    def get_source_files(self) -> list[str]:
        return []


class build_with_autoload_pth(build):
    sub_commands = [*build.sub_commands, ("build_autoload_pth", None)]


setup(cmdclass={"build": build_with_autoload_pth, "build_autoload_pth": build_autoload_pth})
