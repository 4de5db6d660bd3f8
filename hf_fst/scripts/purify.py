"""Purify a possibly backdoored image classifier with FST (or a baseline tuning mode) and report before/after.

    hf-fst purify --model_id ./backdoored --dataset_name uoft-cs/cifar10 \
        --attack badnet --tuning_mode fst --fst_alpha 0.2 --output_dir ./purified
    hf-fst purify --config purify.yaml --seed 1                 # YAML values as defaults, flags override them
    accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml recipes/purify.py ... --use_cpu

Every `TrainingArguments` flag works (`FSTConfig` is one), plus the data, model and attack flags below. The tuning
set is drawn, seeded, from the clean training split; the input model is evaluated first (C-Acc, ASR, RA), then
tuned, then evaluated again. `output_dir` gets the model (safetensors), its config with `id2label`, an image
processor config, a README.md model card and `all_results.json`.
Crash safety: checkpoints and outputs are written to `<output_dir>.partial` and renamed to `output_dir` only when
everything is written; `--resume_from_checkpoint true` continues a killed run from its newest complete checkpoint.
Weights load from safetensors only (`--allow_pickle_weights` is the dangerous opt-in). `--streaming --max_steps N`
reads the training split as a stream. Exit status: 2 for bad input, 3 for a non-finite loss.
Without `--attack` the trigger is unknown: no ASR is claimed and a trigger screen of every registered trigger runs
instead; `--retuning_attack true` re-tunes the result on 5 poisoned images and records the ASR after (P-ASR).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import torch
from transformers import set_seed

from hf_fst import FSTConfig, FSTTrainer, backdoor_test_set, evaluate_backdoor
from hf_fst.arguments import AttackArguments, DataArguments, ModelArguments, RecipeParser, recipe_parser
from hf_fst.attacks import get_attack, list_attacks
from hf_fst.console import configure_console
from hf_fst.errors import ConfigurationError
from hf_fst.hub import format_table, get_token_or_raise, push_to_hub, redacted_command, render_model_card
from hf_fst.loading import (
    check_head,
    get_split,
    label_names,
    load_classifier,
    load_image_dataset,
    load_image_processor,
    resolve_columns_or_raise,
)
from hf_fst.metrics import predict
from hf_fst.outputs import (
    check_output_dir,
    commit_output,
    emit_rank_line,
    resolve_resume_checkpoint,
    save_run_outputs,
    stage_training_output,
    training_summary,
)
from hf_fst.robustness import (
    poisoned_sample,
    retuning_args,
    retuning_attack,
    retuning_set,
    robustness_markdown,
    screen_summary,
    trigger_screen,
)
from hf_fst.selection import materialize_stream, select_tuning_set, select_tuning_stream, take, training_dataset
from hf_fst.transforms import augmentation_epoch_callback, build_transform, collate_image_batch, match_attack_to_model
from hf_fst.tuning.search import describe_search, strength_record

logger = logging.getLogger("hf_fst.purify")

RESULT_KEYS = ("clean_accuracy", "attack_success_rate", "robust_accuracy")


@dataclass
class PurifyArguments:
    """How the tuning set is drawn."""

    tuning_split_ratio: float = field(
        default=0.02, metadata={"help": "Share of the clean training split used for tuning (paper: 0.02)."}
    )
    num_tuning_samples: int | None = field(
        default=None, metadata={"help": "Exact tuning-set size; overrides --tuning_split_ratio."}
    )
    retuning_attack: bool = field(
        default=False,
        metadata={"help": "After tuning, run the retuning attack (needs --attack) and record its ASR (P-ASR)."},
    )
    retuning_poisoned_samples: int = field(
        default=5, metadata={"help": "Poisoned training images in the retuning attack's tuning set (paper: 5)."}
    )
    trigger_screen: bool | None = field(
        default=None,
        metadata={
            "help": "Screen every registered trigger before and after tuning; default: on when --attack is unset."
        },
    )

    def __post_init__(self) -> None:
        if self.retuning_poisoned_samples < 1:
            raise ValueError(
                f"--retuning_poisoned_samples={self.retuning_poisoned_samples} must be >= 1; pass e.g. 5 (the paper's)"
            )
        if self.num_tuning_samples is None and not 0 < self.tuning_split_ratio <= 1:
            raise ValueError(
                f"--tuning_split_ratio={self.tuning_split_ratio} is out of range; pass a fraction in (0, 1]"
            )
        if self.num_tuning_samples is not None and self.num_tuning_samples <= 0:
            raise ValueError(
                f"--num_tuning_samples={self.num_tuning_samples} gives an empty tuning set; pass a positive number"
            )


def make_parser() -> RecipeParser:
    """The command's parser: every `TrainingArguments` flag, the data, model and attack flags, and `--config`."""
    parser = recipe_parser((DataArguments, ModelArguments, AttackArguments, PurifyArguments, FSTConfig))
    return parser


def parse_args(argv: list[str] | None = None):
    return make_parser().parse(argv)


@dataclass
class PurifyRun:
    """Everything `prepare` checked and loaded, ready to evaluate and tune."""

    data_args: DataArguments
    model_args: ModelArguments
    attack_args: AttackArguments
    purify_args: PurifyArguments
    training_args: FSTConfig
    push: bool
    hub_token: str | None
    names: list[str]
    image_column: str
    label_column: str
    attack: object | None
    model: torch.nn.Module
    processor: object | None
    test_split: object
    tuning_set: object
    num_tuning_samples: int
    num_train_rows: int | None
    retuning_poisoned: object | None = None


def prepare(argv: list[str] | None = None) -> PurifyRun:
    """Parse, validate and load; any bad input raises `ConfigurationError` here, before training or writing."""
    try:
        data_args, model_args, attack_args, purify_args, training_args = parse_args(argv)
        retuning_poisoned = None
        configure_console(disable_tqdm=training_args.disable_tqdm, log_level=training_args.log_level)
        # Keep the token out of the arguments the Trainer logs and pickles; we push ourselves at the end.
        hub_token, push = training_args.hub_token, training_args.push_to_hub
        training_args.hub_token, training_args.push_to_hub = None, False
        set_seed(training_args.seed)

        # Cheap checks first.
        check_output_dir(
            training_args.output_dir, model_args.overwrite_output_dir, bool(training_args.resume_from_checkpoint)
        )
        training_args.resume_from_checkpoint = resolve_resume_checkpoint(
            training_args.resume_from_checkpoint,
            training_args.output_dir,
            allow_pickle=model_args.allow_pickle_weights,
        )
        if data_args.streaming and training_args.max_steps <= 0:
            raise ValueError(
                "--streaming: a stream has no length, so the Trainer cannot count epochs; pass --max_steps N "
                "(e.g. epochs * tuning-set size / batch size)"
            )
        if push:
            hub_token = get_token_or_raise(hub_token)

        raw = load_image_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            **({"streaming": True} if data_args.streaming else {}),
        )
        train_split = get_split(raw, data_args.train_split, arg_name="--train_split")
        test_split = get_split(raw, data_args.test_split, arg_name="--test_split")
        image_col, label_col = resolve_columns_or_raise(
            train_split, data_args.image_column_name, data_args.label_column_name
        )
        names = label_names(train_split, label_col)
        attack = attack_args.build(len(names)) if attack_args.known else None
        if purify_args.retuning_attack:
            check_retuning(attack, data_args.streaming, training_args)

        model = load_classifier(
            model_args.model_id, cache_dir=model_args.cache_dir, allow_pickle=model_args.allow_pickle_weights
        )
        check_head(model, len(names), head_name=training_args.head_name)
        processor = load_image_processor(model_args.model_id)
        if attack is not None:
            attack = match_attack_to_model(attack, model, processor, test_split, image_col)

        if data_args.streaming:
            # Stream the training rows; the (small) test split goes to an Arrow cache, written batch by batch.
            if data_args.max_train_samples is not None:
                train_split = train_split.take(data_args.max_train_samples)
            test_split = take(
                materialize_stream(test_split, image_col), data_args.max_eval_samples, training_args.seed
            )
            tuning_set, num_tuning = select_tuning_stream(
                train_split,
                ratio=purify_args.tuning_split_ratio,
                num_samples=purify_args.num_tuning_samples,
                seed=training_args.seed,
            )
            num_train_rows = None
        else:
            train_split = take(train_split, data_args.max_train_samples, training_args.seed)
            test_split = take(test_split, data_args.max_eval_samples, training_args.seed)
            tuning_set = select_tuning_set(
                train_split,
                ratio=purify_args.tuning_split_ratio,
                num_samples=purify_args.num_tuning_samples,
                seed=training_args.seed,
            )
            num_tuning, num_train_rows = len(tuning_set), len(train_split)
            if purify_args.retuning_attack:
                retuning_poisoned = retuning_source(train_split, attack, purify_args, training_args.seed)
    except ConfigurationError:
        raise
    except ValueError as err:
        raise ConfigurationError(str(err)) from err
    logger.info(
        "tuning set: %d of %s training rows; mode %s", num_tuning, num_train_rows or "(streamed)",
        training_args.tuning_mode,
    )  # fmt: skip
    return PurifyRun(
        data_args, model_args, attack_args, purify_args, training_args, push, hub_token, names, image_col, label_col,
        attack, model, processor, test_split, tuning_set, num_tuning, num_train_rows, retuning_poisoned,
    )  # fmt: skip


def check_retuning(attack, streaming: bool, training_args: FSTConfig) -> None:
    """Refuse a retuning attack that cannot run as specified, before anything loads further."""
    if attack is None:
        raise ValueError("--retuning_attack needs --attack: its poisoned images come from the named attack")
    if streaming:
        raise ValueError(
            "--retuning_attack needs a map-style training split to draw poisoned images; drop --streaming"
        )
    if attack.prepares_images:
        raise ValueError(
            f"--retuning_attack with --attack {attack.name}: its poisoned images need the attacker's clean model; "
            "run the retuning attack for this attack through the benchmark grid (--retuning_attack true)"
        )
    if training_args.world_size > 1:
        raise ValueError("--retuning_attack runs in one process; launch without accelerate's multi-process mode")


def retuning_source(train_split, attack, purify_args: PurifyArguments, seed: int):
    """Training rows poisoned by `attack`, for the retuning attack (refused in one line when none can be drawn)."""
    try:
        return poisoned_sample(train_split, attack, purify_args.retuning_poisoned_samples, seed)
    except ValueError as err:
        count = 2 * purify_args.retuning_poisoned_samples
        raise ValueError(f"--retuning_attack: cannot draw {count} poisoned training images ({err})") from err


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns the numbers written to `all_results.json`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # Wall time per phase, logged at the end; start-up runs from process creation (interpreter and imports).
    timings = {"startup": time.time() - psutil.Process().create_time()}
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[phase] = timings.get(phase, 0.0) + now - clock
        clock = now

    run = prepare(argv)
    data_args, model_args, purify_args, training_args = (
        run.data_args,
        run.model_args,
        run.purify_args,
        run.training_args,
    )
    attack, model, processor, names = run.attack, run.model, run.processor, run.names
    image_col, label_col, test_split, tuning_set = run.image_column, run.label_column, run.test_split, run.tuning_set

    # ---- data
    with training_args.main_process_first(desc="building the backdoor test set"):
        backdoor_test = None if attack is None else backdoor_test_set(test_split, attack, image_col, label_col)
    eval_transform = build_transform(model, processor, image_col, label_col, train=False)
    train_transform = build_transform(
        model,
        processor,
        image_col,
        label_col,
        train=True,
        augment=data_args.augment,
        horizontal_flip=data_args.horizontal_flip,
        crop_padding=data_args.crop_padding,
        seed=training_args.seed,
    )
    clean_eval = test_split.with_transform(eval_transform)
    backdoor_eval = None if backdoor_test is None else backdoor_test.with_transform(eval_transform)
    lap("data_preparation")  # argument checks, data set and model loading, tuning-set draw, backdoor test set

    def measure(current: torch.nn.Module) -> dict:
        current.to(training_args.device)
        batch_size = training_args.per_device_eval_batch_size
        if backdoor_eval is None:
            predictions = predict(current, clean_eval, batch_size=batch_size)
            accuracy = float(np.mean(predictions == np.asarray(test_split[label_col])))
            return {"clean_accuracy": accuracy, "attack_success_rate": None, "robust_accuracy": None}
        found = evaluate_backdoor(current, clean_eval, backdoor_eval, batch_size=batch_size)
        return {key: float(found[key]) for key in RESULT_KEYS}

    before = measure(model)
    logger.info("before: %s", before)
    screen = purify_args.trigger_screen if purify_args.trigger_screen is not None else attack is None
    screen_attacks = [
        match_attack_to_model(get_attack(name, target_label=0), model, processor, test_split, image_col)
        for name in (list_attacks() if screen else [])
    ]

    def run_screen(current: torch.nn.Module) -> dict:
        return trigger_screen(
            current, test_split, eval_transform, image_col, label_col, num_classes=len(names), attacks=screen_attacks,
            batch_size=training_args.per_device_eval_batch_size, device=training_args.device,
        )  # fmt: skip

    screen_before = run_screen(model) if screen else None
    lap("evaluation")

    # ---- tune, writing checkpoints and outputs into <output_dir>.partial until everything is written
    output_dir, staging = stage_training_output(training_args, overwrite=model_args.overwrite_output_dir)
    trainer = FSTTrainer(
        model=model,
        args=training_args,
        train_dataset=training_dataset(tuning_set, train_transform, data_args, training_args.seed),
        data_collator=collate_image_batch,
        callbacks=[augmentation_epoch_callback(train_transform)],
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    purified = trainer.accelerator.unwrap_model(trainer.model)
    purified.eval()
    lap("tuning")
    after = measure(purified)
    logger.info("after: %s", after)
    screened = screen_summary(screen_before, run_screen(purified)) if screen else None
    lap("evaluation")
    retuned = None
    if purify_args.retuning_attack:
        retuning_data = retuning_set(run.tuning_set, run.retuning_poisoned, purify_args.retuning_poisoned_samples)
        attacked = retuning_attack(
            purified,
            retuning_data.with_transform(train_transform),
            retuning_args(
                seed=training_args.seed, use_cpu=training_args.use_cpu, disable_tqdm=training_args.disable_tqdm
            ),
            collate_image_batch,
        )
        retuned = measure(attacked)
        logger.info("after the retuning attack: %s", retuned)
        lap("retuning_attack")

    results = {key: after[key] for key in RESULT_KEYS}
    results.update({f"before_{key}": before[key] for key in RESULT_KEYS})
    results.update(
        {
            "tuning_mode": training_args.tuning_mode,
            **strength_record(trainer),
            "num_tuning_samples": run.num_tuning_samples,
            "train_loss": train_result.training_loss,
            "seed": training_args.seed,
            "attack": None if attack is None else attack.to_dict(),
        }
    )
    if screened is not None:
        results["trigger_screen"] = screened
    if retuned is not None:
        results["retuning_attack_success_rate"] = retuned["attack_success_rate"]
        results["retuning_clean_accuracy"] = retuned["clean_accuracy"]
        results["retuning_poisoned_samples"] = purify_args.retuning_poisoned_samples
    emit_rank_line(training_args, results, purified)

    # ---- save into the staging folder: the weights collectively, everything else from the main process
    save_run_outputs(trainer, purified, processor, names, staging, results, test_split, image_col)
    if trainer.is_world_process_zero():
        world = training_args.world_size
        repo_id = training_args.hub_model_id or output_dir.resolve().name
        card = render_model_card(
            before=before,
            after=after,
            model_name=repo_id.split("/")[-1],
            base_model=model_args.model_id,
            dataset_name=data_args.dataset_name,
            dataset_config=data_args.dataset_config_name,
            test_split=data_args.test_split,
            train_split=data_args.train_split,
            attack=None if attack is None else attack.to_dict(),
            tuning_mode=training_args.tuning_mode,
            fst_alpha=results["fst_alpha"],
            fst_alpha_normalized=results["fst_alpha_normalized"],
            fst_alpha_choice=describe_search(results["fst_alpha_search"]) if results["fst_alpha_search"] else None,
            tuning_set_size=run.num_tuning_samples,
            tuning_split_ratio=None if purify_args.num_tuning_samples else purify_args.tuning_split_ratio,
            training=training_summary(training_args),
            seed=training_args.seed,
            command=redacted_command(
                argv if argv is None else ["recipes/purify.py", *argv],
                launcher=f"accelerate launch --num_processes {world}" if world > 1 else None,
            ),
            repo_id=repo_id,
            label_names=names,
            extra_sections=robustness_markdown(
                screened, retuned, attack_known=attack is not None,
                num_poisoned=purify_args.retuning_poisoned_samples, label_names=names,
            ),
        )  # fmt: skip
        card.save(str(staging / "README.md"))
        commit_output(staging, output_dir)  # the finished folder appears in one rename
        print(format_table({"before": before, f"after ({training_args.tuning_mode})": after}), flush=True)
        if run.push:
            url = push_to_hub(output_dir, repo_id, token=run.hub_token, private=training_args.hub_private_repo)
            logger.info("pushed to %s", url)
    lap("saving")
    logger.info("wall seconds: %s", json.dumps({k: round(v, 2) for k, v in timings.items()}))
    return results
