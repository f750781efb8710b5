"""`python -m peft_grow.evaluation ...` is the lm_eval command line with GROW registered with PEFT."""

from .harness import main

main()
