"""Local `evaluate` metric modules shipped with hf-fst (loadable offline with `evaluate.load(folder)`)."""
