"""`hf-fst`: one console command for the recipes, `hf-fst <subcommand> [--config file.yaml] [flags]`.

Each subcommand runs the same `main` as its recipe (`recipes/<name>.py`), so `accelerate launch recipes/purify.py`
and `hf-fst purify` take the same flags and write the same outputs.
"""

from __future__ import annotations

import importlib
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

from hf_fst.errors import ConfigurationError

__all__ = ["COMMANDS", "environment", "main", "run_command"]

COMMANDS: dict[str, tuple[str, str]] = {
    "purify": ("hf_fst.scripts.purify", "Purify a possibly backdoored classifier with FST or a baseline."),
    "train-backdoor": ("hf_fst.scripts.train_backdoor", "Poison a data set and train a backdoored classifier on it."),
    "benchmark": ("hf_fst.scripts.benchmark", "Run the resumable benchmark grid (attacks x rates x seeds x modes)."),
    "import-checkpoint": (
        "hf_fst.scripts.import_checkpoint",
        "Import a BackdoorBench or official-FST checkpoint as a transformers model.",
    ),
}
"""Subcommand -> (module with `main(argv)`, one-line description)."""

_PACKAGES = ("torch", "transformers", "datasets", "accelerate", "huggingface_hub", "safetensors", "numpy", "peft")


def run_command(main: Callable[[list[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a command's `main`; bad input prints one line and returns 2, a diverged run 3, success 0."""
    try:
        main(None if argv is None else list(argv))
    except ConfigurationError as err:  # bad input: one line, no traceback, nothing written
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # diverged: nothing was written under --output_dir
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


def environment() -> dict[str, str]:
    """Versions and hardware worth pasting into a bug report."""
    from importlib.metadata import PackageNotFoundError, version

    import hf_fst

    info = {"hf-fst": hf_fst.__version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in _PACKAGES:
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    try:
        import torch

        info["torch threads"] = str(torch.get_num_threads())
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["accelerator"] = f"CUDA {torch.version.cuda}: {', '.join(names)}"
        else:
            info["accelerator"] = "none (CPU)"
    except ImportError:
        pass
    return info


def _usage() -> str:
    width = max(map(len, [*COMMANDS, "env"]))
    lines = ["usage: hf-fst <command> [--config file.yaml] [flags]   (hf-fst <command> --help for its flags)", ""]
    lines += ["commands:"] + [f"  {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items()]
    lines.append(f"  {'env':<{width}}  Print versions and hardware for a bug report.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hf-fst` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "env":
        print("\n".join(f"- {key}: {value}" for key, value in environment().items()))
        return 0
    if name not in COMMANDS:
        print(f"error: {name!r} is not an hf-fst command; use one of {', '.join([*COMMANDS, 'env'])}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # The parser reads sys.argv[1:]; its usage line and the model card's command show `hf-fst <name>`.
    sys.argv = [f"hf-fst {name}", *rest]
    return run_command(module.main)


if __name__ == "__main__":
    raise SystemExit(main())
