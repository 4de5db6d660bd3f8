"""Model cards and Hub publishing for backdoored and purified checkpoints.

Cards are rendered from one Jinja template with `huggingface_hub.ModelCard` so the metadata (a `model-index` with
C-Acc, ASR and RA before and after) is what the Hub parses and `ModelCard.load` reads back. Tokens are passed
explicitly to the Hub client and never rendered, logged or saved: the reproduce command is redacted too.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEFENSE_NAMES",
    "METRICS",
    "TEMPLATE_NAME",
    "format_table",
    "get_token_or_raise",
    "hub_repo_id",
    "push_to_hub",
    "redacted_command",
    "render_model_card",
    "template_path",
]

TEMPLATE_NAME = "model_card.md"

# (key in all_results.json, short name used in papers, model-index metric type)
METRICS: tuple[tuple[str, str], ...] = (
    ("clean_accuracy", "C-Acc"),
    ("attack_success_rate", "ASR"),
    ("robust_accuracy", "RA"),
)

DEFENSE_NAMES: dict[str, str] = {
    "fst": "Feature Shift Tuning (FST)",
    "ft": "vanilla fine-tuning (FT)",
    "lp": "linear probing (LP)",
    "ft-init": "fine-tuning with a re-initialised head (FT-init)",
    "fe-tuning": "feature-extractor tuning (FE-tuning)",
}

# Flags whose value must never reach a card or a log.
_SECRET_FLAGS = ("--hub_token", "--token")


def template_path() -> str:
    """Path of the packaged card template (`model_cards/` in the repo holds the same file)."""
    return str(resources.files("hf_fst") / "templates" / TEMPLATE_NAME)


def redacted_command(argv: Sequence[str] | None = None, launcher: str | None = None) -> str:
    """The command line that reproduces this run, with token values replaced by `<redacted>`."""
    argv = list(sys.argv if argv is None else argv)
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            out.append("<redacted>")
            skip = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in _SECRET_FLAGS:
            if eq:
                out.append(f"{flag}=<redacted>")
            else:
                out.append(arg)
                skip = True
            continue
        out.append(arg)
    if out and out[0].endswith(".py"):
        script = Path(out[0])
        # Recipes are run from the repository root; show them that way wherever this run started from.
        out[0] = f"recipes/{script.name}" if script.parent.name == "recipes" else out[0]
        prefix = launcher or "python"
        return " ".join([prefix, *map(shlex.quote, out)])
    if out and out[0].startswith("hf-fst "):  # a console subcommand, "hf-fst purify"
        return " ".join([out[0], *map(shlex.quote, out[1:])])
    if out and out[0].endswith(("-m", "__main__.py")):
        out = out[1:]
    return " ".join(map(shlex.quote, out))


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * float(value), 2)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * float(value):.2f}"


def _versions() -> dict[str, str]:
    import datasets
    import huggingface_hub
    import torch
    import transformers

    import hf_fst

    return {
        "hf-fst": hf_fst.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "datasets": datasets.__version__,
        "huggingface_hub": huggingface_hub.__version__,
    }


def _short_name(name: str | None) -> str:
    if not name:
        return "unknown"
    path = Path(name)
    return path.name if (name.startswith((".", "/", "~")) or path.exists()) else name


def hub_repo_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub repository id (`owner/name`) rather than a local folder, else None."""
    return name if name and "/" in name and _short_name(name) == name else None


def render_model_card(
    *,
    after: Mapping[str, float | None],
    before: Mapping[str, float | None] | None = None,
    model_name: str,
    base_model: str | None,
    dataset_name: str,
    dataset_config: str | None = None,
    test_split: str = "test",
    train_split: str = "train",
    attack: Mapping[str, Any] | None = None,
    poison_rate: float | None = None,
    tuning_mode: str | None = None,
    fst_alpha: float | None = None,
    fst_alpha_normalized: float | None = None,
    fst_alpha_choice: str | None = None,
    tuning_set_size: int | None = None,
    tuning_split_ratio: float | None = None,
    training: Mapping[str, Any] | None = None,
    seed: int = 42,
    command: str | None = None,
    repo_id: str | None = None,
    label_names: Sequence[str] | None = None,
    extra_sections: str | None = None,
):
    """Render the card of a purified model (`before` given) or of a backdoored one (`before=None`).

    `after`/`before` hold fractions under `clean_accuracy`, `attack_success_rate`, `robust_accuracy` (as in
    `all_results.json`); the card shows percentages, and the `model-index` stores them as percentages too.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    purified = before is not None
    attack = dict(attack or {"name": "none"})
    attack_name = str(attack.pop("name", "none"))
    target_label = attack.get("target_label")
    defense = DEFENSE_NAMES.get(tuning_mode or "", tuning_mode or "training")
    dataset_id = _short_name(dataset_name)
    base_id = _short_name(base_model) if base_model else None
    hub_base = hub_repo_id(base_model)

    eval_results = []
    stages: list[tuple[str, Mapping[str, float | None]]] = [("before", before)] if purified else []
    stages.append(("after" if purified else "backdoored", after))
    for stage, values in stages:
        for key, short in METRICS:
            value = _percent(values.get(key))
            if value is None:
                continue
            label = {"before": f"{short} before purification", "after": f"{short} after {tuning_mode}"}.get(
                stage, short
            )
            eval_results.append(
                EvalResult(
                    task_type="image-classification",
                    task_name="Backdoor purification" if purified else "Backdoored image classification",
                    dataset_type=dataset_id,
                    dataset_name=dataset_id,
                    dataset_config=dataset_config,
                    dataset_split=test_split,
                    metric_type=f"{key}_{stage}" if purified else key,
                    metric_name=f"{label} (%)",
                    metric_value=value,
                )
            )
    tags = ["image-classification", "backdoor", "hf-fst", f"attack-{attack_name}"]
    tags.append(f"defense-{tuning_mode}" if purified else "backdoored")
    card_data = ModelCardData(
        model_name=model_name,
        base_model=hub_base,
        datasets=[dataset_name] if hub_repo_id(dataset_name) else None,
        library_name="transformers",
        pipeline_tag="image-classification",
        license=None,
        tags=tags,
        metrics=["accuracy"],
        eval_results=eval_results,
    )
    rows = [
        {
            "name": short,
            "before": _fmt(before.get(key)) if purified else "",
            "after": _fmt(after.get(key)),
        }
        for key, short in METRICS
    ]
    training = dict(training or {})
    target_name = None
    if label_names is not None and isinstance(target_label, int) and 0 <= target_label < len(label_names):
        target_name = label_names[target_label]
    card = ModelCard.from_template(
        card_data,
        template_path=template_path(),
        model_name=model_name,
        purified=purified,
        base_model_link=(f"[{base_id}](https://huggingface.co/{hub_base})" if hub_base else f"`{base_id}`")
        if base_id
        else "a model trained from scratch",
        base_model_short=base_id or "input",
        defense_name=defense,
        tuning_mode=tuning_mode,
        fst_alpha=None if fst_alpha is None else f"{fst_alpha:.4g}",
        fst_alpha_normalized=None if fst_alpha_normalized is None else f"{fst_alpha_normalized:.4g}",
        fst_alpha_choice=fst_alpha_choice,
        tuning_set_size=tuning_set_size,
        tuning_split_ratio=tuning_split_ratio,
        train_split=train_split,
        dataset_name=dataset_id,
        dataset_config=dataset_config,
        attack_name=attack_name,
        attack_params=attack,
        clean_label=bool(attack.get("is_clean_label", False)),
        target_label=target_label,
        target_label_name=target_name,
        poison_rate=poison_rate,
        metric_rows=rows,
        extra_sections=extra_sections or None,
        num_train_epochs=training.get("num_train_epochs"),
        learning_rate=training.get("learning_rate"),
        batch_size=training.get("batch_size"),
        optim=training.get("optim"),
        lr_scheduler_type=training.get("lr_scheduler_type"),
        seed=seed,
        command=command or redacted_command(),
        repo_id=repo_id or model_name,
        versions=_versions(),
    )
    return card


def format_table(columns: Mapping[str, Mapping[str, float | None]]) -> str:
    """A terminal table of C-Acc, ASR and RA (percent), one column per model (e.g. before, FT, FST)."""
    width = max([8, *(len(name) + 2 for name in columns)])
    lines = ["metric".ljust(8) + "".join(name.rjust(width) for name in columns)]
    for key, short in METRICS:
        lines.append(short.ljust(8) + "".join(_fmt(values.get(key)).rjust(width) for values in columns.values()))
    return "\n".join(lines)


def get_token_or_raise(token: str | None = None) -> str:
    """The token to push with (explicit, `HF_TOKEN`, or `hf auth login`), or a one-line error before any work."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ValueError(
            "--push_to_hub needs a Hugging Face write token and none was found; run `hf auth login`, "
            "set HF_TOKEN, or drop --push_to_hub"
        )
    return token


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload model purified with hf-fst",
) -> str:
    """Create `repo_id` if needed and upload the checkpoint folder (card included) in one commit; return the URL.

    Intermediate Trainer checkpoints and logs stay local.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    repo_url = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=str(folder),
        token=token,
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", ".cache/**"],
    )
    return str(getattr(info, "commit_url", None) or repo_url)
