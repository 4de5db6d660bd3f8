import math

import evaluate
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from tiny_models import random_image_rows, tiny_resnet
from transformers import EvalPrediction, ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput

from hf_fst.attacks import backdoor_test_set
from hf_fst.forward import logits_of
from hf_fst.metrics import (
    ASR_METRIC_PATH,
    attack_success_rate,
    clean_accuracy,
    compute_backdoor_metrics,
    evaluate_backdoor,
    load_attack_success_rate,
    predict,
    robust_accuracy,
)


def _model(seed=0):
    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    return ResNetForImageClassification(config)


def _images(n=40):
    rng = np.random.default_rng(0)
    pictures = [PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    features = Features({"img": Image(), "label": ClassLabel(num_classes=10)})
    return Dataset.from_dict({"img": pictures, "label": [i % 10 for i in range(n)]}, features=features)


def _transform(batch):
    """The recipes' row format: pixel_values, labels, and original_label when present."""
    out = {
        "pixel_values": [
            torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1) for im in batch["img"]
        ],
        "labels": batch["label"],
    }
    if "original_label" in batch:
        out["original_label"] = batch["original_label"]
    return out


def test_formulas():
    assert clean_accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
    assert attack_success_rate(np.array([0, 0, 0, 1]), [0, 0, 0, 0]) == 0.75
    assert robust_accuracy(torch.tensor([0, 5, 6]), [4, 5, 6]) == pytest.approx(2 / 3)
    logits = np.array([[0.1, 2.0], [3.0, 0.0], [0.0, 1.0]])
    assert clean_accuracy(logits, [1, 0, 0]) == pytest.approx(2 / 3)  # logits are arg-maxed


def test_metric_errors():
    with pytest.raises(ValueError, match=r"^labels=: has 2 entries but predictions= has 3"):
        clean_accuracy([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match=r"^target_labels=: is empty"):
        attack_success_rate([], [])
    with pytest.raises(ValueError, match=r"^predictions=: expected class ids"):
        robust_accuracy(np.zeros((2, 2, 2)), [0, 1])
    with pytest.raises(ValueError, match=r"^original_labels=: has 1 entries but predictions= has 2"):
        robust_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match=r"^target_labels=: expected class ids"):
        attack_success_rate([0, 1], np.zeros((2, 2, 2)))


def test_running_a_model_edge_cases():
    class Plain(torch.nn.Module):  # returns a logits tensor, not a transformers output
        def forward(self, pixel_values):
            return pixel_values.flatten(1)[:, :3]

    rows = [{"pixel_values": np.eye(3, dtype=np.float32)[i % 3].reshape(3, 1, 1), "label": i % 3} for i in range(5)]
    predictions = predict(Plain(), rows, batch_size=2)
    assert predictions.dtype == np.int64 and predictions.tolist() == [0, 1, 2, 0, 1]
    empty = predict(Plain(), [], batch_size=2)
    assert empty.dtype == np.int64 and empty.shape == (0,)
    # Rows that name the class `label` (a raw data set's column) are read as `labels`.
    backdoor = [dict(row, labels=0, original_label=row["label"]) for row in rows]
    result = evaluate_backdoor(Plain(), rows, backdoor, batch_size=2)
    assert result == {"clean_accuracy": 1.0, "attack_success_rate": 0.4, "robust_accuracy": 1.0}
    # The device argument reaches both passes: inputs on "meta" cannot meet the CPU weights.
    model = _model()
    images = [{"pixel_values": np.zeros((3, 32, 32), np.float32), "labels": 0, "original_label": 1}] * 2
    unreadable = [{"labels": 0, "original_label": 1}] * 2  # fails with a ValueError if its pass is reached first
    for meta_rows in ((images, unreadable), (images[:0], images)):  # the clean pass, then the backdoor pass alone
        with pytest.raises((RuntimeError, NotImplementedError)):
            evaluate_backdoor(model, *meta_rows, device="meta")
    # Rows without a label (neither `labels` nor `label`) and an empty clean set are refused by name.
    with pytest.raises(ValueError, match=r"^dataset=: rows have keys \['pixel_values'\] but no 'labels'"):
        evaluate_backdoor(model, [{"pixel_values": images[0]["pixel_values"]}], images)
    with pytest.raises(ValueError, match=r"^labels=: is empty; the metric is undefined on an empty set"):
        evaluate_backdoor(model, images[:0], images)


def test_predict_and_evaluate_backdoor_match_a_manual_loop():
    model = _model()
    clean = _images(40)
    backdoor = backdoor_test_set(clean, "badnet")
    model.train()
    preds = predict(model, clean.with_transform(_transform), batch_size=16)
    assert model.training  # mode restored
    with torch.no_grad():
        batch = _transform(clean[:])
        logits = model.eval()(pixel_values=torch.stack(batch["pixel_values"])).logits
    np.testing.assert_array_equal(preds, logits.argmax(-1).numpy())
    model.train()
    result = evaluate_backdoor(
        model, clean.with_transform(_transform), backdoor.with_transform(_transform), batch_size=7
    )
    assert model.training and set(result) == {"clean_accuracy", "attack_success_rate", "robust_accuracy"}
    backdoor_preds = predict(model, backdoor.with_transform(_transform))
    assert result["clean_accuracy"] == np.mean(preds == np.array(clean["label"]))
    assert result["attack_success_rate"] == np.mean(backdoor_preds == 0)
    assert result["robust_accuracy"] == np.mean(backdoor_preds == np.array(backdoor["original_label"]))
    with pytest.raises(ValueError, match=r"^dataset=: rows have keys .* but no 'original_label'"):
        evaluate_backdoor(model, clean.with_transform(_transform), clean.with_transform(_transform))
    with pytest.raises(ValueError, match=r"^dataset=: rows have keys \['img', 'label'\] but no 'pixel_values'"):
        predict(model, clean)


def test_predict_accepts_plain_row_iterables():
    model = _model()
    rng = np.random.default_rng(0)
    rows = [{"pixel_values": rng.normal(size=(3, 32, 32)).astype(np.float32)} for _ in range(5)]
    with torch.no_grad():
        model.eval()
        expected = model(pixel_values=torch.from_numpy(np.stack([r["pixel_values"] for r in rows]))).logits.argmax(-1)
        model.train()
    # Every batch size gives the same predictions in row order, including single-row batches and tensors.
    for batch_size in (1, 2, 5, 8):
        np.testing.assert_array_equal(predict(model, rows, batch_size=batch_size), expected.numpy())
    tensors = [{"pixel_values": torch.from_numpy(r["pixel_values"])} for r in rows]
    np.testing.assert_array_equal(predict(model, tensors, batch_size=2), expected.numpy())
    # A generator has no length (no progress total), and a numpy-formatted table hands over whole arrays.
    np.testing.assert_array_equal(predict(model, (r for r in rows), batch_size=2), expected.numpy())
    table = Dataset.from_dict({"pixel_values": [r["pixel_values"] for r in rows]}).with_format("numpy")
    np.testing.assert_array_equal(predict(model, table, batch_size=2), expected.numpy())
    with pytest.raises(ValueError, match=r"^batch_size=0: expected a positive int"):
        predict(model, rows, batch_size=0)
    # The device argument is honoured: inputs sent to "meta" cannot meet the CPU weights.
    with pytest.raises((RuntimeError, NotImplementedError)):
        predict(model, rows, device="meta")


def test_compute_backdoor_metrics():
    logits = np.eye(10)[[0, 0, 1, 2]]
    assert compute_backdoor_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1, 2]))) == {
        "accuracy": 0.75
    }
    pair = EvalPrediction(predictions=logits, label_ids=(np.array([0, 0, 0, 0]), np.array([0, 3, 1, 2])))
    metrics = compute_backdoor_metrics(pair)
    assert metrics["accuracy"] == 0.5
    assert metrics["attack_success_rate"] == pytest.approx(1 / 3) and metrics["robust_accuracy"] == pytest.approx(
        2 / 3
    )
    clean = compute_backdoor_metrics(EvalPrediction(predictions=logits, label_ids=(np.zeros(4), np.zeros(4))))
    assert math.isnan(clean["attack_success_rate"])
    # Models that return more than logits: the Trainer hands a tuple whose first entry is the logits.
    hidden = np.eye(10)[[3, 3, 3, 3]]
    with_hidden = EvalPrediction(predictions=(logits, hidden), label_ids=np.array([0, 1, 1, 2]))
    assert compute_backdoor_metrics(with_hidden) == {"accuracy": 0.75}
    # Two rows without original labels: label_ids is an array of length 2, not a (labels, original) pair.
    two = compute_backdoor_metrics(EvalPrediction(predictions=np.eye(10)[[4, 5]], label_ids=np.array([4, 1])))
    assert two == {"accuracy": 0.5}
    with pytest.raises(ValueError, match=r"^label_ids=: expected class ids"):
        compute_backdoor_metrics(EvalPrediction(predictions=logits, label_ids=(np.zeros((4, 2, 2)), np.zeros(4))))
    with pytest.raises(ValueError, match=r"^label_ids=: expected class ids"):
        compute_backdoor_metrics(EvalPrediction(predictions=logits, label_ids=np.zeros((4, 2, 2))))
    with pytest.raises(ValueError, match=r"^predictions=: expected class ids \(n,\) or logits"):
        compute_backdoor_metrics(EvalPrediction(predictions=np.zeros((2, 2, 2)), label_ids=np.zeros(2)))


def test_compute_backdoor_metrics_in_a_trainer(tmp_path):
    model = _model()
    clean = _images(20)
    backdoor = backdoor_test_set(clean, "badnet")
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=8, report_to=[], remove_unused_columns=False, use_cpu=True
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset={"clean": clean.with_transform(_transform), "backdoor": backdoor.with_transform(_transform)},
        compute_metrics=compute_backdoor_metrics,
    )
    metrics = trainer.evaluate()
    expected = evaluate_backdoor(model, clean.with_transform(_transform), backdoor.with_transform(_transform))
    assert metrics["eval_clean_accuracy"] == pytest.approx(expected["clean_accuracy"])
    assert metrics["eval_backdoor_accuracy"] == pytest.approx(expected["attack_success_rate"])

    # RA too: pass the true labels as a second label name (the clean set copies `labels`).
    def with_original(batch):
        out = _transform(batch)
        out["original_label"] = batch.get("original_label", batch["label"])
        return out

    args.label_names = ["labels", "original_label"]
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset={
            "clean": clean.with_transform(with_original),
            "backdoor": backdoor.with_transform(with_original),
        },
        compute_metrics=compute_backdoor_metrics,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_clean_accuracy"] == pytest.approx(expected["clean_accuracy"])
    assert metrics["eval_backdoor_attack_success_rate"] == pytest.approx(expected["attack_success_rate"])
    assert metrics["eval_backdoor_robust_accuracy"] == pytest.approx(expected["robust_accuracy"])
    assert math.isnan(metrics["eval_clean_robust_accuracy"])


def test_asr_evaluate_module_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = load_attack_success_rate()
    assert metric.compute(predictions=[0, 0, 3, 1], references=[0, 0, 0, 0]) == {"attack_success_rate": 0.5}
    same = evaluate.load(str(ASR_METRIC_PATH))
    result = same.compute(predictions=[0, 0, 3, 1], references=[0, 0, 0, 0], original_labels=[0, 2, 3, 4])
    assert result["attack_success_rate"] == pytest.approx(1 / 3)
    # Keyword arguments reach `evaluate.load` (e.g. an experiment id for several evaluations at once).
    named = load_attack_success_rate(experiment_id="defence-a", keep_in_memory=True)
    assert named.experiment_id == "defence-a" and named.keep_in_memory and metric.experiment_id != "defence-a"


def test_logits_of_reads_every_output_form():
    logits = torch.arange(6.0).reshape(2, 3)
    for output in (logits, ImageClassifierOutput(logits=logits), {"logits": logits}, (logits, "hidden"), [logits]):
        assert logits_of(output) is logits
    for output in (None, (), ("text",), "logits"):
        with pytest.raises(TypeError, match=r"^model output of type \w+ holds no logits"):
            logits_of(output)


def test_predict_reads_a_tuple_returning_model():
    model = tiny_resnet()
    rows = random_image_rows(7)
    expected = predict(model, rows, batch_size=3)
    model.config.return_dict = False
    np.testing.assert_array_equal(predict(model, rows, batch_size=3), expected)
