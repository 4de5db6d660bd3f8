"""The main functions of the `hf-fst` subcommands; `recipes/*.py` are thin front ends over them."""
