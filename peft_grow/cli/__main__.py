"""`python -m peft_grow.cli` runs the `peft-grow` command."""

from . import main

main()
