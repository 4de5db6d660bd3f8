"""Import a BackdoorBench or official-FST checkpoint as a transformers model folder, ready for `hf-fst purify`.

    hf-fst import-checkpoint --checkpoint record/badnet/attack_result.pt --format backdoorbench --output_dir bb-badnet
    hf-fst import-checkpoint --checkpoint defense_result.pt --format fst --dataset cifar10 --output_dir fst-model

The folder gets `model.safetensors`, `config.json` (labels from `--dataset`, or the record's data set), an image
processor with that data set's normalisation as BackdoorBench applies it, and a card naming the source file (with
its SHA-256) and format. The file is read without running pickled code; nothing is written on failure.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from huggingface_hub import ModelCard, ModelCardData

from hf_fst.arguments import RecipeParser, recipe_parser
from hf_fst.errors import ConfigurationError
from hf_fst.models.importing import ARCHITECTURES, DATASET_PRESETS, FORMATS, build_imported_model
from hf_fst.outputs import check_output_dir, commit_output, prepare_staging
from hf_fst.transforms import default_image_processor

logger = logging.getLogger("hf_fst.import_checkpoint")


@dataclass
class ImportArguments:
    """Which file, in which format, to which folder."""

    checkpoint: str = field(default=None, metadata={"help": "attack_result.pt / defense_result.pt / a state dict."})
    format: str = field(default=None, metadata={"help": f"Checkpoint format: {' or '.join(FORMATS)}."})
    output_dir: str = field(default=None, metadata={"help": "Folder to write the transformers model to."})
    dataset: str | None = field(
        default=None,
        metadata={"help": f"Labels and normalisation: {', '.join(DATASET_PRESETS)} (default: the record's)."},
    )
    architecture: str | None = field(
        default=None, metadata={"help": f"For a bare state dict: {', '.join(ARCHITECTURES)} (default: detected)."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a non-empty --output_dir."})

    def __post_init__(self) -> None:
        for name in ("checkpoint", "format", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required; see --help")


def make_parser() -> RecipeParser:
    return recipe_parser((ImportArguments,))


def _processor(source: dict, model):
    """The data set's normalisation as BackdoorBench applies it (none for GTSRB), at the model's input size."""
    size = (int(model.config.image_size),) * 2
    if source.get("mean") is None:
        return default_image_processor(model.config, size, normalize=False)
    return default_image_processor(model.config, size, mean=source["mean"], std=source["std"])


def _card(source: dict, model) -> ModelCard:
    """What the folder is and where it came from; it claims nothing about backdoors it did not measure."""
    data = ModelCardData(library_name="transformers", pipeline_tag="image-classification", tags=["hf-fst", "imported"])
    config = model.config
    lines = [
        f"# Imported {source['architecture']} ({source['format']} checkpoint)",
        "",
        f"Converted by hf-fst from `{source['file']}` (SHA-256 `{source['sha256']}`), a {source['format']} "
        f"checkpoint of `{source['architecture']}`; weights mapped one to one, logits unchanged.",
        "",
        f"- architecture: {type(model).__name__}, depths {config.depths}, width multiplier "
        f"{config.width_multiplier:g}, {config.num_channels} input channels, {config.image_size}x{config.image_size}",
        f"- labels: {source.get('dataset') or 'unnamed'} ({config.num_labels} classes)",
        f"- normalisation: {'mean ' + str(source['mean']) + ', std ' + str(source['std']) if source.get('mean') else 'none'}",
        "",
        "This model was not evaluated here. A checkpoint from a backdoor-attack record is backdoored on purpose;",
        "purify it with `hf-fst purify --model_id <this folder> ...` before any use.",
        "",
        "## How to use",
        "",
        "```python",
        "import hf_fst  # registers hf-fst's architectures with the Auto classes",
        "from transformers import AutoModelForImageClassification, pipeline",
        "",
        'model = AutoModelForImageClassification.from_pretrained("<this folder>")',
        'classify = pipeline("image-classification", model="<this folder>")',
        "```",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    """Convert; returns what the card records of the source."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        (args,) = make_parser().parse(argv)
        check_output_dir(args.output_dir, args.overwrite_output_dir)
        model, source = build_imported_model(
            args.checkpoint, args.format, dataset=args.dataset, architecture=args.architecture
        )
    except ConfigurationError:
        raise
    except ValueError as err:
        raise ConfigurationError(str(err)) from err
    staging = prepare_staging(args.output_dir, overwrite=args.overwrite_output_dir, resuming=False)
    model.save_pretrained(staging)
    _processor(source, model).save_pretrained(staging)
    _card(source, model).save(str(staging / "README.md"))
    (staging / "import_source.json").write_text(json.dumps(source, indent=2, default=str) + "\n")
    commit_output(staging, args.output_dir)
    logger.info("imported %s (%s) into %s", source["file"], source["architecture"], args.output_dir)
    return source
