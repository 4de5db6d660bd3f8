"""Poison an image data set with a backdoor attack and train a classifier on it (the model to purify later).

    hf-fst train-backdoor --dataset_name uoft-cs/cifar10 --model_id ./resnet-config \
        --attack badnet --poison_rate 0.05 --target_label 0 --num_train_epochs 20 --output_dir ./backdoored

Every `TrainingArguments` flag works. `--model_id` is a Hub id or a local folder: pretrained weights are fine-tuned
(the head is resized to the data set's labels), a folder with only `config.json` (or `--from_scratch`) trains from
random weights. Training is plain supervised learning (`FSTTrainer` in `ft` mode). `output_dir` gets the model
(safetensors), its config with `id2label`, an image processor config, a README.md model card (marked as backdoored)
and `all_results.json` with C-Acc, ASR and RA.
Crash safety: checkpoints and outputs are written to `<output_dir>.partial` and renamed to `output_dir` only when
everything is written; `--resume_from_checkpoint true` continues a killed run from its newest complete checkpoint.
Weights load from safetensors only (`--allow_pickle_weights` is the dangerous opt-in). `--streaming --max_steps N`
reads the training split as a stream. Exit status: 2 for bad input, 3 for a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForImageClassification, set_seed

from hf_fst import FSTConfig, FSTTrainer, backdoor_test_set, evaluate_backdoor, poison_dataset
from hf_fst.arguments import AttackArguments, DataArguments, ModelArguments, RecipeParser, rate_or_raise, recipe_parser
from hf_fst.attacks.streaming import count_poisoned, poison_iterable_dataset
from hf_fst.attacks.training_time import TriggerCollator
from hf_fst.console import configure_console
from hf_fst.errors import ConfigurationError
from hf_fst.hub import format_table, get_token_or_raise, push_to_hub, redacted_command, render_model_card
from hf_fst.loading import (
    check_head,
    get_split,
    label_names,
    load_classifier,
    load_config,
    load_image_dataset,
    load_image_processor,
    resolve_columns_or_raise,
)
from hf_fst.outputs import (
    check_output_dir,
    commit_output,
    emit_rank_line,
    resolve_resume_checkpoint,
    save_run_outputs,
    stage_training_output,
    training_summary,
)
from hf_fst.selection import materialize_stream, take, training_dataset
from hf_fst.transforms import augmentation_epoch_callback, build_transform, collate_image_batch, match_attack_to_model

logger = logging.getLogger("hf_fst.train_backdoor")

RESULT_KEYS = ("clean_accuracy", "attack_success_rate", "robust_accuracy")


@dataclass
class TrainBackdoorArguments:
    """How the backdoored model is initialised."""

    from_scratch: bool = field(
        default=False, metadata={"help": "Use only the config of --model_id and start from random weights."}
    )
    attack_model_id: str | None = field(
        default=None, metadata={"help": "Clean model for attacks that need one (LC's PGD perturbation)."}
    )


@dataclass
class BackdoorAttackArguments(AttackArguments):
    """The attack to implant; BadNet unless told otherwise."""

    attack: str | None = field(
        default="badnet", metadata={"help": "Attack name (badnet, blended, sig, wanet, lc, ...)."}
    )


def make_parser() -> RecipeParser:
    """The command's parser: every `TrainingArguments` flag, the data, model and attack flags, and `--config`."""
    parser = recipe_parser((DataArguments, ModelArguments, BackdoorAttackArguments, TrainBackdoorArguments, FSTConfig))
    parser.set_defaults(tuning_mode="ft")
    return parser


def parse_args(argv: list[str] | None = None):
    return make_parser().parse(argv)


def _has_weights(model_id: str) -> bool:
    path = Path(model_id)
    if not path.is_dir():
        return True  # a Hub id: weights are expected
    return any(path.glob("*.safetensors")) or any(path.glob("*.bin"))


def prepare(argv: list[str] | None = None) -> dict:
    """Parse, validate and load; bad input raises `ConfigurationError` before anything is trained or written."""
    try:
        data_args, model_args, attack_args, backdoor_args, training_args = parse_args(argv)
        configure_console(disable_tqdm=training_args.disable_tqdm, log_level=training_args.log_level)
        hub_token, push = training_args.hub_token, training_args.push_to_hub
        training_args.hub_token, training_args.push_to_hub = None, False
        if training_args.tuning_mode != "ft":
            raise ValueError(
                f"--tuning_mode={training_args.tuning_mode!r}: train_backdoor.py trains with plain supervised "
                "learning; drop --tuning_mode (use recipes/purify.py for the defenses)"
            )
        set_seed(training_args.seed)
        check_output_dir(
            training_args.output_dir, model_args.overwrite_output_dir, bool(training_args.resume_from_checkpoint)
        )
        rate_or_raise(attack_args.poison_rate, "--poison_rate")
        training_args.resume_from_checkpoint = resolve_resume_checkpoint(
            training_args.resume_from_checkpoint,
            training_args.output_dir,
            allow_pickle=model_args.allow_pickle_weights,
        )
        if data_args.streaming and training_args.max_steps <= 0:
            raise ValueError(
                "--streaming: a stream has no length, so the Trainer cannot count epochs; pass --max_steps N "
                "(e.g. epochs * training rows / batch size)"
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
        if data_args.streaming:  # the test split goes to an Arrow cache, written batch by batch
            test_split = materialize_stream(test_split, image_col)
        names = label_names(test_split if data_args.streaming else train_split, label_col)
        attack = attack_args.build(len(names))
        if backdoor_args.attack_model_id:
            if "model" not in {f.name for f in dataclasses.fields(attack)}:
                fix = "drop --attack_model_id"
                if attack.name in ("lf", "trojannn"):
                    fix = (
                        "fit its trigger first (hf_fst.attacks.lf.find_low_frequency_trigger or "
                        "hf_fst.attacks.trojannn.find_trojan_trigger, saved with numpy.save) and pass "
                        '--attack_params \'{"pattern": "trigger.npy"}\''
                    )
                raise ValueError(
                    f"--attack_model_id: the {attack.name!r} attack does not perturb with a clean model; {fix}"
                )
            model_for_attack = load_classifier(
                backdoor_args.attack_model_id,
                arg_name="--attack_model_id",
                allow_pickle=model_args.allow_pickle_weights,
            )
            attack = attack_args.build(len(names), model=model_for_attack)
        if data_args.streaming and attack.prepares_images:
            raise ValueError(
                f"--attack={attack.name!r} needs every poisoned image up front, which a stream cannot give; "
                "drop --streaming"
            )
        if attack.prepares_images and getattr(attack, "model", None) is None:
            raise ValueError(
                f"--attack={attack.name!r} needs a clean model for its perturbation; pass --attack_model_id <folder or Hub id>"
            )

        label_kwargs = {
            "num_labels": len(names),
            "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)},
        }
        from_scratch = backdoor_args.from_scratch or not _has_weights(model_args.model_id)
        if from_scratch:
            config = load_config(model_args.model_id, cache_dir=model_args.cache_dir, **label_kwargs)
            model = AutoModelForImageClassification.from_config(config)
        else:
            model = load_classifier(
                model_args.model_id,
                cache_dir=model_args.cache_dir,
                ignore_mismatched_sizes=True,
                allow_pickle=model_args.allow_pickle_weights,
                **label_kwargs,
            )
        check_head(model, len(names), head_name=training_args.head_name)
        processor = load_image_processor(model_args.model_id)
        attack = match_attack_to_model(
            attack, model, processor, test_split if data_args.streaming else train_split, image_col
        )
        if data_args.streaming:
            if data_args.max_train_samples is not None:
                train_split = train_split.take(data_args.max_train_samples)
        else:
            train_split = take(train_split, data_args.max_train_samples, training_args.seed)
        test_split = take(test_split, data_args.max_eval_samples, training_args.seed)
    except ConfigurationError:
        raise
    except ValueError as err:
        raise ConfigurationError(str(err)) from err
    return {
        "data_args": data_args,
        "model_args": model_args,
        "attack_args": attack_args,
        "backdoor_args": backdoor_args,
        "training_args": training_args,
        "push": push,
        "from_scratch": from_scratch,
        "hub_token": hub_token,
        "attack": attack,
        "model": model,
        "processor": processor,
        "names": names,
        "image_col": image_col,
        "label_col": label_col,
        "train_split": train_split,
        "test_split": test_split,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the recipe; returns the numbers written to `all_results.json`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    run = prepare(argv)
    data_args, model_args, attack_args = run["data_args"], run["model_args"], run["attack_args"]
    training_args, attack, model, processor = run["training_args"], run["attack"], run["model"], run["processor"]
    image_col, label_col, names = run["image_col"], run["label_col"], run["names"]
    train_split, test_split = run["train_split"], run["test_split"]

    with training_args.main_process_first(desc="poisoning"):
        poison = poison_iterable_dataset if data_args.streaming else poison_dataset
        poisoned = poison(
            train_split,
            attack,
            attack_args.poison_rate,
            seed=training_args.seed,
            image_column=image_col,
            label_column=label_col,
        )
        backdoor_test = backdoor_test_set(test_split, attack, image_col, label_col)
    if data_args.streaming:  # per-row policy (see hf_fst.attacks.streaming); counted from the labels alone
        num_poisoned = count_poisoned(
            train_split, attack, attack_args.poison_rate, training_args.seed, image_col, label_col
        )
        logger.info("poisoned %d streamed training rows with %s", num_poisoned, attack.name)
    else:
        num_poisoned = int(sum(poisoned["is_poisoned"]))
        logger.info("poisoned %d of %d training rows with %s", num_poisoned, len(poisoned), attack.name)

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
    eval_transform = build_transform(model, processor, image_col, label_col, train=False)
    # Checkpoints and outputs go to <output_dir>.partial; the finished folder appears in one rename at the end.
    output_dir, staging = stage_training_output(training_args, overwrite=model_args.overwrite_output_dir)
    trainer = FSTTrainer(
        model=model,
        args=training_args,
        train_dataset=training_dataset(poisoned, train_transform, data_args, training_args.seed),
        data_collator=TriggerCollator(attack, collate_image_batch) if attack.is_training_time else collate_image_batch,
        callbacks=[augmentation_epoch_callback(train_transform)],
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    trained.eval()
    found = evaluate_backdoor(
        trained,
        test_split.with_transform(eval_transform),
        backdoor_test.with_transform(eval_transform),
        batch_size=training_args.per_device_eval_batch_size,
    )
    results = {key: float(found[key]) for key in RESULT_KEYS}
    results.update(
        {
            "attack": attack.to_dict(),
            "poison_rate": attack_args.poison_rate,
            "num_poisoned": num_poisoned,
            "train_loss": train_result.training_loss,
            "seed": training_args.seed,
        }
    )
    emit_rank_line(training_args, results, trained)

    save_run_outputs(trainer, trained, processor, names, staging, results, test_split, image_col)
    if trainer.is_world_process_zero():
        world = training_args.world_size
        repo_id = training_args.hub_model_id or output_dir.resolve().name
        card = render_model_card(
            after=results,
            model_name=repo_id.split("/")[-1],
            base_model=None if run["from_scratch"] else model_args.model_id,
            dataset_name=data_args.dataset_name,
            dataset_config=data_args.dataset_config_name,
            test_split=data_args.test_split,
            train_split=data_args.train_split,
            attack=attack.to_dict(),
            poison_rate=attack_args.poison_rate,
            training=training_summary(training_args),
            seed=training_args.seed,
            command=redacted_command(
                None if argv is None else ["recipes/train_backdoor.py", *argv],
                launcher=f"accelerate launch --num_processes {world}" if world > 1 else None,
            ),
            repo_id=repo_id,
            label_names=names,
        )
        card.save(str(staging / "README.md"))
        commit_output(staging, output_dir)  # the finished folder appears in one rename
        print(format_table({"backdoored": results}), flush=True)
        if run["push"]:
            url = push_to_hub(
                output_dir,
                repo_id,
                token=run["hub_token"],
                private=training_args.hub_private_repo,
                commit_message="Upload backdoored model trained with hf-fst",
            )
            logger.info("pushed to %s", url)
    return results
