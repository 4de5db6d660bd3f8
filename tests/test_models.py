"""The CIFAR architectures as AutoModels, and checkpoint import from BackdoorBench and the official FST code.

The reference networks below are written here from the published descriptions of the two toolkits' networks, with
their state-dict names, independently of `hf_fst.models`; an imported checkpoint must give exactly their logits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification

from hf_fst.cli import main as cli_main
from hf_fst.heads import find_linear_head
from hf_fst.models import (
    CifarResNetConfig,
    CifarResNetForImageClassification,
    PreActResNetConfig,
    PreActResNetForImageClassification,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ reference networks
class RefPreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        a = F.relu(self.bn1(x))
        skip = self.shortcut(a) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + skip


class RefBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class RefNet(nn.Module):
    """preact=True: BackdoorBench's preactresnet18 family; False: the FST code's resnet18 family."""

    def __init__(self, preact, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), classes=10):
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, (w, d) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(d):
                blocks.append((RefPreActBlock if preact else RefBasicBlock)(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(cin, classes)
        self.depth = len(widths)

    def forward(self, x):
        out = self.conv1(x) if self.preact else F.relu(self.bn1(self.conv1(x)))
        for i in range(self.depth):
            out = getattr(self, f"layer{i + 1}")(out)
        out = nn.AdaptiveAvgPool2d((1, 1))(out) if self.preact else F.avg_pool2d(out, 4)
        return self.linear(out.flatten(1))


def trained_reference(preact: bool, **kwargs) -> RefNet:
    """A reference net with non-trivial BN statistics (a few train-mode passes), in eval mode."""
    torch.manual_seed(1)
    net = RefNet(preact, **kwargs)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return net.eval()


SMALL = {"widths": (16, 32, 64, 128), "depths": (2, 1, 1, 2)}


# -------------------------------------------------------------------------------------------- architectures
@pytest.mark.parametrize(
    ("config_class", "model_class", "preact"),
    [(PreActResNetConfig, PreActResNetForImageClassification, True), (CifarResNetConfig, CifarResNetForImageClassification, False)],
)  # fmt: skip
def test_architectures_are_automodels_with_the_published_layout(tmp_path, config_class, model_class, preact):
    model = model_class(config_class(num_labels=10))
    reference = RefNet(preact)
    names = {k.removeprefix(f"{model.base_model_prefix}."): tuple(v.shape) for k, v in model.state_dict().items()}
    assert names == {k: tuple(v.shape) for k, v in reference.state_dict().items()}  # ResNet-18 sizes and names
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert find_linear_head(model)[0] == "linear"
    out = model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]))
    assert out.logits.shape == (4, 10) and out.loss is not None and out.loss.requires_grad
    # A small member of the family, saved and reloaded through the Auto classes (after `import hf_fst`).
    small = model_class(config_class(num_labels=3, depths=[1, 1], width_multiplier=0.25)).eval()
    assert small.config.hidden_sizes == [16, 32] and small.linear.in_features == 32
    small.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is config_class
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 40, 40)  # not 32x32: the pool adapts
    assert type(loaded) is model_class and torch.equal(loaded(pixel_values=x).logits, small(pixel_values=x).logits)


@pytest.mark.parametrize(("kwargs", "message"), [({"depths": []}, "depths="), ({"width_multiplier": 0}, "width_")])
def test_bad_architecture_configs_are_refused(kwargs, message):
    with pytest.raises(Exception, match=message):
        PreActResNetConfig(**kwargs)


# ----------------------------------------------------------------------------------------------------- import
def backdoorbench_record(net: RefNet, data_parallel: bool = True) -> dict:
    state = {(f"module.{k}" if data_parallel else k): v for k, v in net.state_dict().items()}
    index = {"original_index_array": np.arange(50, dtype=np.int64), "poison_indicator": np.zeros(50, dtype=np.int8)}
    return {
        "model_name": "preactresnet18",
        "num_classes": 10,
        "model": state,
        "data_path": "./data/cifar10",
        "img_size": (32, 32, 3),
        "clean_data": "cifar10",
        "bd_train": {**index, "bd_data_container": {"rate": np.float64(0.1)}},
        "bd_test": index,
    }


def imported_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(pixel_values=x).logits


def test_backdoorbench_record_imports_with_identical_logits(tmp_path, capsys):
    net = trained_reference(True, **SMALL)
    torch.save(backdoorbench_record(net), tmp_path / "attack_result.pt")
    out = tmp_path / "imported"
    args = ["--checkpoint", str(tmp_path / "attack_result.pt"), "--format", "backdoorbench", "--output_dir", str(out)]
    assert cli_main(["import-checkpoint", *args]) == 0
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(imported_logits(out, x), net(x))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hf-fst-preact-resnet" and config["depths"] == [2, 1, 1, 2]
    assert config["id2label"]["9"] == "truck"
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.4914, 0.4822, 0.4465] and processor["image_std"] == [0.247, 0.243, 0.261]
    card = (out / "README.md").read_text()
    assert "attack_result.pt" in card and "backdoorbench" in card and "import hf_fst" in card
    source = json.loads((out / "import_source.json").read_text())
    assert len(source["sha256"]) == 64 and source["architecture"] == "preactresnet18"


def test_fst_state_dict_imports_with_identical_logits(tmp_path):
    net = trained_reference(False, **SMALL)
    torch.save(net.state_dict(), tmp_path / "defense_result.pt")
    out = tmp_path / "imported"
    assert (
        cli_main(
            [
                "import-checkpoint",
                "--checkpoint",
                str(tmp_path / "defense_result.pt"),
                "--format",
                "fst",
                "--dataset",
                "cifar10",
                "--output_dir",
                str(out),
            ]
        )  # fmt: skip
        == 0
    )
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(imported_logits(out, x), net(x))
    assert json.loads((out / "config.json").read_text())["model_type"] == "hf-fst-cifar-resnet"


class Payload:
    """Unpickling this would create a marker file: the importer must refuse it before that happens."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    record = backdoorbench_record(trained_reference(True, **SMALL))
    record["bd_train"]["hook"] = Payload(str(marker))
    torch.save(record, tmp_path / "evil.pt")
    out = tmp_path / "imported"
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "import_checkpoint.py"), "--checkpoint", str(tmp_path / "evil.pt"),
         "--format", "backdoorbench", "--output_dir", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: --checkpoint='{tmp_path / 'evil.pt'}' was refused without running it")
    assert "posix.system" in line or "os.system" in line
    assert not marker.exists() and not out.exists() and not Path(f"{out}.partial").exists()


@pytest.mark.parametrize(
    ("edit", "flags", "message"),
    [
        (lambda r: r.update(model_name="vgg19_bn"), [], r"model_name='vgg19_bn' cannot be imported.*preactresnet18"),
        (lambda r: r["model"].pop("module.layer1.0.bn1.weight"), [], r"1 missing \(e.g. preact_resnet.layer1.0.bn1.weight\)"),
        (lambda r: r["model"].update({"module.extra.weight": torch.zeros(1)}), [], r"1 unexpected \(e.g. preact_resnet.extra"),
        (lambda r: r["model"].update({"module.linear.bias": torch.zeros(7)}), [], r"mis-shaped \(e.g. linear.bias\)"),
        (lambda r: None, ["--dataset", "gtsrb"], r"the head has 10 outputs but gtsrb has 43 classes"),
        (lambda r: None, ["--format", "pytorch"], r"--format='pytorch' is unknown"),
    ],
)  # fmt: skip
def test_mismatched_checkpoints_are_refused_in_one_line(tmp_path, capsys, edit, flags, message):
    record = backdoorbench_record(trained_reference(True, **SMALL))
    edit(record)
    torch.save(record, tmp_path / "r.pt")
    out = tmp_path / "imported"
    args = ["--checkpoint", str(tmp_path / "r.pt"), "--format", "backdoorbench", "--output_dir", str(out), *flags]
    assert cli_main(["import-checkpoint", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert re.search(message, err), err
    assert not out.exists()


def test_purify_runs_on_an_imported_model_and_pipeline_reads_it(tmp_path):
    from dataset_cache import write_cifar10_like
    from datasets import load_dataset
    from transformers import pipeline

    from hf_fst.scripts import purify

    net = trained_reference(True, widths=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    torch.save(backdoorbench_record(net), tmp_path / "attack_result.pt")
    imported = tmp_path / "imported"
    args = ["--checkpoint", str(tmp_path / "attack_result.pt"), "--format", "backdoorbench", "--output_dir"]
    assert cli_main(["import-checkpoint", *args, str(imported)]) == 0

    # transformers' pipeline applies the imported processor (BackdoorBench's CIFAR-10 normalisation) as the network
    # saw its inputs: its top class is the reference network's on the same normalised pixels.
    data = write_cifar10_like(tmp_path / "data", rows={"train": 100, "test": 40})
    test = load_dataset(str(data), split="test")
    outputs = pipeline("image-classification", model=str(imported), device="cpu")(list(test["img"]), top_k=1)
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255) for im in test["img"]]
    )
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.247, 0.243, 0.261])
    with torch.no_grad():
        expected = net(((pixels - mean) / std).permute(0, 3, 1, 2)).argmax(-1)
    names = test.features["label"].names
    assert [out[0]["label"] for out in outputs] == [names[i] for i in expected.tolist()]

    results = purify.main(
        ["--model_id", str(imported), "--dataset_name", str(data), "--attack", "badnet", "--tuning_mode", "fst",
         "--num_tuning_samples", "32", "--max_steps", "2", "--per_device_train_batch_size", "16",
         "--output_dir", str(tmp_path / "purified"), "--report_to", "none", "--save_strategy", "no",
         "--disable_tqdm", "true", "--use_cpu", "true"]
    )  # fmt: skip
    assert results["tuning_mode"] == "fst" and results["num_tuning_samples"] == 32
    # The input model was measured as imported: its clean accuracy before tuning is the reference network's.
    labels = torch.tensor(test["label"])
    assert results["before_clean_accuracy"] == pytest.approx(float((expected == labels).float().mean()))
    purified = AutoModelForImageClassification.from_pretrained(tmp_path / "purified")
    assert type(purified) is PreActResNetForImageClassification
    assert not torch.equal(purified.linear.weight, net.linear.weight)  # FST re-initialised and tuned the head
