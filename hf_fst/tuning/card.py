"""The model card `FSTTrainer` writes into every push: what was tuned, how, and what the trainer measured.

The recipes write a fuller card (C-Acc, ASR and RA before and after, the attack); a trainer only knows its own
run, so this card states the tuning settings and the evaluations found in the log, and says what it did not
measure rather than leaving the generic `Trainer` card, which would not mention the defense at all.
"""

from __future__ import annotations

from typing import Any

from hf_fst.hub import DEFENSE_NAMES, hub_repo_id
from hf_fst.tuning.search import describe_search, strength_record

__all__ = ["trainer_model_card"]


def _latest_evaluation(log_history: list[dict[str, Any]]) -> tuple[int | None, dict[str, float]]:
    for entry in reversed(log_history):
        metrics = {k: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        if metrics:
            return entry.get("step"), metrics
    return None, {}


def _alpha_text(trainer: Any) -> str:
    record = strength_record(trainer)
    if record["fst_alpha"] is None:
        return "`auto`, not chosen yet (the search runs when training starts)"
    text = f"{record['fst_alpha']:.4g} (normalised strength alpha x \\|\\|W0\\|\\|^2 = {record['fst_alpha_normalized']:.4g})"
    return text + (f". {describe_search(record['fst_alpha_search'])}" if record["fst_alpha_search"] else "")


def trainer_model_card(trainer: Any, model_name: str, tags: str | list[str] | None = None, **_: Any):
    """A `huggingface_hub.ModelCard` for the current state of an `FSTTrainer` run."""
    from huggingface_hub import ModelCard, ModelCardData

    args = trainer.args
    mode = args.tuning_mode
    config = getattr(trainer.accelerator.unwrap_model(trainer.model), "config", None)
    base = hub_repo_id(getattr(config, "_name_or_path", None))
    extra = [tags] if isinstance(tags, str) else list(tags or [])
    card_tags = ["image-classification", "backdoor", "hf-fst", f"defense-{mode}", *extra]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=base,
        tags=list(dict.fromkeys(card_tags)),
    )
    step, evaluation = _latest_evaluation(trainer.state.log_history)
    settings = {
        "tuning mode": f"`{mode}` ({DEFENSE_NAMES.get(mode, mode)})",
        "fst_alpha": _alpha_text(trainer) if mode == "fst" else "not used",
        "head": f"`{trainer.head_name}`, ||W0|| = {float(trainer.fst_w0_norm):.4f}",
        "head re-initialised": "yes" if args.reinitializes_head else "no",
        "head norm projected to ||W0||": "after every optimizer step" if args.projects_head_norm else "no",
        "optimizer": f"{args.optim} ({args.optim_args or 'default arguments'}), learning rate {args.learning_rate:g}",
        "schedule": f"{args.lr_scheduler_type}, {args.num_train_epochs:g} epochs / max_steps {args.max_steps}",
        "batch size per device": str(args.per_device_train_batch_size),
        "label smoothing": f"{args.label_smoothing_factor:g}",
        "optimizer steps done when this card was written": str(trainer.state.global_step),
        "seed": str(args.seed),
    }
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {model_name}",
        "",
        f"This checkpoint was tuned with {DEFENSE_NAMES.get(mode, mode)} by `hf_fst.FSTTrainer`, a backdoor "
        "purification method (Min et al., *Towards Stable Backdoor Purification through Feature Shift Tuning*, "
        "NeurIPS 2023)" + (f", starting from [{base}](https://huggingface.co/{base})." if base else "."),
        "",
        "## Tuning settings",
        "",
        "| setting | value |",
        "| --- | --- |",
        *[f"| {key} | {value} |" for key, value in settings.items()],
        "",
        "## Evaluation",
        "",
    ]
    if evaluation:
        lines += [f"Latest evaluation logged by the trainer (step {step}):", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {key} | {value:.4f} |" for key, value in sorted(evaluation.items())]
    else:
        lines.append("The trainer ran no evaluation, so this card reports no accuracy or attack success rate.")
    lines += [
        "",
        "The trainer does not measure the model before tuning; `recipes/purify.py` measures clean accuracy, attack "
        "success rate and robust accuracy before and after, and writes them into its card. A low attack success "
        "rate after tuning may hide a backdoor that a short fine-tuning on a few poisoned images brings back.",
        "",
        "## How to use",
        "",
        "```python",
        "import hf_fst  # registers hf-fst's architectures with the Auto classes",
        "from transformers import AutoModelForImageClassification",
        "",
        f'model = AutoModelForImageClassification.from_pretrained("{args.hub_model_id or model_name}")',
        "```",
        "",
    ]
    return ModelCard("\n".join(lines))
