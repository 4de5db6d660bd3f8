"""Every `Trainer` argument works with FSTTrainer as in `transformers.Trainer`, or is refused by name.

Each supported argument is checked on the weights after a few steps against a plain PyTorch loop written here from
the same start (or against `transformers.Trainer` itself in `ft` mode), in `fst` and in a baseline mode. Each test
carries `@pytest.mark.trainer_argument(row)`, and `test_every_row_of_the_contract_has_a_test` ties the README's
table (`hf_fst.tuning.contract.TRAINER_ARGUMENTS`) to these tests.
"""

from __future__ import annotations

import ast
import copy
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_models import NUM_LABELS, fst_args, random_image_rows, tiny_resnet, tiny_vit
from transformers import ConvNextImageProcessor, Trainer, TrainerCallback, TrainingArguments

from hf_fst import FSTConfig, FSTTrainer
from hf_fst.tuning.contract import TRAINER_ARGUMENTS, render_trainer_arguments_table

REPO = Path(__file__).resolve().parents[1]
MODES = ["fst", "ft"]
ALPHA = 0.5
argument = pytest.mark.trainer_argument


def make_args(tmp_path, **overrides) -> FSTConfig:
    kwargs = dict(
        seed=3,
        data_seed=3,
        fst_alpha=ALPHA,
        num_train_epochs=4,
        per_device_train_batch_size=32,
        # Batches in data set order, as the reference loop takes them: in bf16 even the order of a sum shows.
        train_sampling_strategy="sequential",
    )
    kwargs.update(overrides)
    return fst_args(tmp_path, **kwargs)


def head_of(model) -> torch.nn.Linear:
    return model.classifier[1] if isinstance(model.classifier, torch.nn.Sequential) else model.classifier


def reference(
    model,
    rows,
    mode: str,
    steps: int = 4,
    *,
    seed: int = 3,
    optimizer=None,
    scheduler=None,
    task_loss=None,
    accumulation: int = 1,
    max_grad_norm: float = 0.0,
    autocast: torch.dtype | None = None,
    head=head_of,
):
    """FST or FT written out in plain PyTorch: one pass over all `rows` per optimizer step.

    `optimizer(params)` / `scheduler(optimizer)` build what the caller asks for (default: SGD momentum 0.9, cosine);
    `task_loss(logits, labels, num_items)` replaces the mean cross-entropy.
    """
    model = copy.deepcopy(model).train()
    layer = head(model)
    w0 = layer.weight.detach().clone()
    w0_norm = w0.norm()
    if mode == "fst":
        bound = 1 / math.sqrt(layer.in_features)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            layer.weight.copy_(torch.empty(layer.weight.shape).uniform_(-bound, bound, generator=generator))
            layer.bias.copy_(torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(params) if optimizer else torch.optim.SGD(params, lr=0.01, momentum=0.9)
    sched = scheduler(opt) if scheduler else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    x = torch.stack([r["pixel_values"] for r in rows])
    y = torch.tensor([r["labels"] for r in rows])
    for _ in range(steps):
        for xs, ys in zip(x.chunk(accumulation), y.chunk(accumulation), strict=True):
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                logits = model(pixel_values=xs).logits
            logits = logits.float()
            if task_loss is None:
                loss = F.cross_entropy(logits, ys) / accumulation
            else:
                loss = task_loss(logits, ys, len(y))
            if mode == "fst":
                loss = loss + ALPHA * (layer.weight * w0).sum() / accumulation
            loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        if mode == "fst":
            with torch.no_grad():
                layer.weight.mul_(w0_norm / layer.weight.norm())
        opt.zero_grad()
        sched.step()
    return model


def assert_same_weights(got, expected, start, atol: float = 1e-5) -> None:
    start = dict(start.named_parameters())
    got = dict(got.named_parameters())
    moved = 0.0
    for name, param in expected.named_parameters():
        torch.testing.assert_close(got[name].detach(), param.detach(), atol=atol, rtol=0, msg=name)
        moved = max(moved, (param.detach() - start[name].detach()).abs().max().item())
    assert moved > 1e-3, "training barely moved the model: the comparison would be vacuous"


def unchanged(model, snapshot) -> bool:
    return all(torch.equal(p, snapshot[n]) for n, p in model.named_parameters())


# --------------------------------------------------------------------------------------------------- optimizers
@argument("optimizers=(optimizer, scheduler)")
@pytest.mark.parametrize("mode", MODES)
def test_caller_optimizer_and_scheduler_train_the_tuned_copy(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_resnet()
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    trainer = FSTTrainer(
        model=model, args=make_args(tmp_path, tuning_mode=mode), train_dataset=rows, optimizers=(optimizer, scheduler)
    )
    trainer.train()
    expected = reference(
        model,
        rows,
        mode,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1 / (1 + step)),
    )
    assert_same_weights(trainer.model, expected, model)
    assert unchanged(model, snapshot), "the caller's model must not be modified"
    assert scheduler.last_epoch == 4


@argument("optimizers=(optimizer, scheduler)")
def test_caller_optimizer_without_scheduler_gets_the_configured_schedule(tmp_path):
    rows, model = random_image_rows(32), tiny_resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    trainer = FSTTrainer(model=model, args=make_args(tmp_path), train_dataset=rows, optimizers=(optimizer, None))
    trainer.train()
    assert_same_weights(trainer.model, reference(model, rows, "fst"), model)


@argument("optimizers=(optimizer, scheduler)")
def test_bad_optimizers_are_refused(tmp_path):
    model, args = tiny_resnet(), make_args(tmp_path)
    used = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(pixel_values=torch.randn(2, 3, 16, 16)).logits.sum().backward()
    used.step()
    with pytest.raises(ValueError, match="optimizers: the optimizer already holds state"):
        FSTTrainer(model=model, args=args, optimizers=(used, None))
    foreign = torch.optim.SGD(tiny_resnet(seed=1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="belongs to neither the model passed as model= nor its tuned copy"):
        FSTTrainer(model=model, args=args, optimizers=(foreign, None))
    mine = torch.optim.SGD(model.parameters(), lr=0.1)
    other = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD(model.parameters(), lr=0.1), lambda s: 1.0)
    with pytest.raises(ValueError, match="the scheduler was built on another optimizer"):
        FSTTrainer(model=model, args=args, optimizers=(mine, other))
    with pytest.raises(ValueError, match=r"optimizers=\(None, scheduler\)"):
        FSTTrainer(model=model, args=args, optimizers=(None, other))


@argument("optimizer_cls_and_kwargs=")
@pytest.mark.parametrize("mode", MODES)
def test_optimizer_class_and_kwargs(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_resnet()
    trainer = FSTTrainer(
        model=model,
        args=make_args(tmp_path, tuning_mode=mode),
        train_dataset=rows,
        optimizer_cls_and_kwargs=(torch.optim.Adam, {"lr": 2e-3, "betas": (0.8, 0.99)}),
    )
    trainer.train()
    expected = reference(model, rows, mode, optimizer=lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.8, 0.99)))
    assert_same_weights(trainer.model, expected, model)


# ------------------------------------------------------------------------------------------------------- losses
CLASS_WEIGHTS = torch.linspace(0.5, 1.5, NUM_LABELS)


def weighted_loss(outputs, labels, num_items_in_batch=None):
    """A loss normalised over the whole accumulated batch, the way `Trainer` hands `num_items_in_batch` over."""
    return F.cross_entropy(outputs.logits.float(), labels, weight=CLASS_WEIGHTS, reduction="sum") / num_items_in_batch


@argument("compute_loss_func=")
@pytest.mark.parametrize("mode", MODES)
def test_compute_loss_func_under_gradient_accumulation(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_vit()
    args = make_args(tmp_path, tuning_mode=mode, per_device_train_batch_size=16, gradient_accumulation_steps=2)
    trainer = FSTTrainer(model=model, args=args, train_dataset=rows, compute_loss_func=weighted_loss)
    trainer.train()
    expected = reference(
        model,
        rows,
        mode,
        accumulation=2,
        task_loss=lambda logits, y, n: F.cross_entropy(logits, y, weight=CLASS_WEIGHTS, reduction="sum") / n,
    )
    assert_same_weights(trainer.model, expected, model)


@argument("label_smoothing_factor")
@pytest.mark.parametrize("mode", MODES)
def test_label_smoothing(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_resnet()
    trainer = FSTTrainer(
        model=model, args=make_args(tmp_path, tuning_mode=mode, label_smoothing_factor=0.2), train_dataset=rows
    )
    trainer.train()
    expected = reference(
        model, rows, mode, task_loss=lambda logits, y, n: F.cross_entropy(logits, y, label_smoothing=0.2)
    )
    assert_same_weights(trainer.model, expected, model)
    # Evaluation reports the smoothed loss, as `Trainer` does.
    with torch.no_grad():
        logits = trainer.model.eval()(pixel_values=torch.stack([r["pixel_values"] for r in rows])).logits
    smoothed = F.cross_entropy(logits, torch.tensor([r["labels"] for r in rows]), label_smoothing=0.2).item()
    trainer.args.per_device_eval_batch_size = 32
    assert trainer.evaluate(rows)["eval_loss"] == pytest.approx(smoothed, abs=1e-5)


@argument("label_smoothing_factor")
def test_ft_mode_matches_transformers_trainer_with_label_smoothing(tmp_path):
    """Weights and logged numbers (loss, grad_norm) equal `transformers.Trainer`'s in `ft` mode."""
    rows, model = random_image_rows(32), tiny_resnet()
    common = dict(
        use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", seed=3, num_train_epochs=4,
        per_device_train_batch_size=8, learning_rate=0.01, optim="sgd", optim_args="momentum=0.9",
        lr_scheduler_type="cosine", max_grad_norm=0.0, label_smoothing_factor=0.2, logging_steps=3,
        train_sampling_strategy="sequential",
    )  # fmt: skip
    plain = Trainer(
        model=copy.deepcopy(model),
        args=TrainingArguments(output_dir=str(tmp_path / "hf"), **common),
        train_dataset=rows,
    )
    plain.train()
    ours = FSTTrainer(
        model=model, args=FSTConfig(output_dir=str(tmp_path / "fst"), tuning_mode="ft", **common), train_dataset=rows
    )
    ours.train()
    assert_same_weights(ours.model, plain.model, model)
    theirs = [(e["step"], e["loss"], e["grad_norm"]) for e in plain.state.log_history if "grad_norm" in e]
    mine = [(e["step"], e["loss"], e["grad_norm"]) for e in ours.state.log_history if "grad_norm" in e]
    assert [s for s, _, _ in mine] == [s for s, _, _ in theirs] == [3, 6, 9, 12, 15]
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(mine, theirs, strict=True):
        assert loss_a == pytest.approx(loss_b, abs=1e-5) and norm_a == pytest.approx(norm_b, rel=1e-5)


@pytest.mark.parametrize(
    "logging",
    [
        {"logging_steps": 3, "logging_first_step": True},
        {"logging_strategy": "epoch"},
        {"logging_steps": 5, "include_num_input_tokens_seen": "all"},
        {"logging_steps": 2, "max_grad_norm": 0.05},  # clipped: the norm before clipping is logged
        {"logging_steps": 2, "gradient_accumulation_steps": 2},
        {"logging_steps": 2, "gradient_accumulation_steps": 2, "loss_func": True},
    ],
    ids=["first-step", "epoch", "tokens", "clipped", "accumulated", "accumulated-loss-func"],
)
def test_logs_carry_what_transformers_trainer_logs(tmp_path, logging):
    """The gradient norm is only computed for steps that log it (no clipping): every log still carries the one
    `transformers.Trainer` logs, at the same steps, with the same other keys; ce_loss is the window's mean loss
    per batch, with or without gradient accumulation and a `compute_loss_func` normalised over the whole batch."""
    rows, model = random_image_rows(32), tiny_resnet()
    common = dict(
        use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", seed=3, num_train_epochs=3,
        per_device_train_batch_size=8, learning_rate=0.01, optim="sgd", optim_args="momentum=0.9",
        lr_scheduler_type="cosine", max_grad_norm=0.0, train_sampling_strategy="sequential",
    )  # fmt: skip

    def summed(outputs, labels, num_items_in_batch=None):  # normalised over the whole accumulated batch
        return F.cross_entropy(outputs.logits, labels, reduction="sum") / num_items_in_batch

    loss_func = summed if logging.pop("loss_func", False) else None
    common.update(logging)
    # Under accumulation `Trainer` does not rescale this model's own (mean) loss, so it gets the summed loss, which
    # is the gradient FSTTrainer's per-batch cross-entropy gives.
    reference_loss = summed if common.get("gradient_accumulation_steps", 1) > 1 else loss_func
    plain = Trainer(model=copy.deepcopy(model), args=TrainingArguments(output_dir=str(tmp_path / "hf"), **common),
                    train_dataset=rows, compute_loss_func=reference_loss)  # fmt: skip
    plain.train()
    ours = FSTTrainer(model=model, args=FSTConfig(output_dir=str(tmp_path / "fst"), tuning_mode="ft", **common),
                      train_dataset=rows, compute_loss_func=loss_func)  # fmt: skip
    ours.train()
    theirs = [e for e in plain.state.log_history if "loss" in e]
    mine = [e for e in ours.state.log_history if "loss" in e]
    assert [e["step"] for e in mine] == [e["step"] for e in theirs] and len(mine) >= 2
    for a, b in zip(mine, theirs, strict=True):
        assert set(a) - {"ce_loss"} == set(b) and "grad_norm" in a
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        # ce_loss: the mean over the window, kept to 6 decimals (the Trainer's own loss is that mean too)
        assert a["ce_loss"] == round(a["ce_loss"], 6) and a["ce_loss"] == pytest.approx(b["loss"], abs=1e-5)


# ---------------------------------------------------------------------------------------- optimisation details
@argument("gradient_accumulation_steps")
@pytest.mark.parametrize("mode", MODES)
def test_gradient_accumulation(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_vit()
    args = make_args(tmp_path, tuning_mode=mode, per_device_train_batch_size=8, gradient_accumulation_steps=4)
    trainer = FSTTrainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    assert trainer.state.global_step == 4
    assert_same_weights(trainer.model, reference(model, rows, mode, accumulation=4), model)


@argument("max_grad_norm")
@pytest.mark.parametrize("mode", MODES)
def test_max_grad_norm(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_resnet()
    trainer = FSTTrainer(
        model=model,
        args=make_args(tmp_path, tuning_mode=mode, max_grad_norm=0.05, learning_rate=0.1),
        train_dataset=rows,
    )
    trainer.train()
    expected = reference(
        model, rows, mode, max_grad_norm=0.05, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)
    )
    assert_same_weights(trainer.model, expected, model)


@argument("bf16 / fp16")
@pytest.mark.parametrize("mode", MODES)
def test_bf16_mixed_precision(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_resnet()
    trainer = FSTTrainer(model=model, args=make_args(tmp_path, tuning_mode=mode, bf16=True), train_dataset=rows)
    trainer.train()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert trainer.fst_w0.dtype == torch.float32
    assert_same_weights(trainer.model, reference(model, rows, mode, autocast=torch.bfloat16), model)


@argument("bf16 / fp16")
def test_bf16_weights_keep_penalty_and_projection_in_float32(tmp_path):
    model = tiny_resnet()
    start_head = model.classifier[1].weight.detach().clone()
    model = model.to(torch.bfloat16)
    rows = [
        {"pixel_values": r["pixel_values"].to(torch.bfloat16), "labels": r["labels"]} for r in random_image_rows(16)
    ]
    trainer = FSTTrainer(model=model, args=make_args(tmp_path, per_device_train_batch_size=8), train_dataset=rows)
    w0 = model.classifier[1].weight.float()
    assert trainer.fst_w0.dtype == torch.float32 and torch.equal(trainer.fst_w0, w0)
    assert not torch.equal(w0, start_head), "bf16 rounding should show: the check would be vacuous otherwise"
    penalty = trainer.fst_penalty()
    assert penalty.dtype == torch.float32
    assert penalty.item() == pytest.approx(ALPHA * (trainer.head.weight.double() * w0.double()).sum().item(), rel=1e-6)
    trainer.train()
    norm = trainer.head.weight.double().norm().item()
    assert norm == pytest.approx(trainer.fst_w0_norm.item(), rel=4e-3)  # bf16 keeps 8 bits of mantissa


@argument("bf16 / fp16")
def test_fp16_trains_with_float32_fst_state(tmp_path):
    rows, model = random_image_rows(32), tiny_resnet()
    trainer = FSTTrainer(model=model, args=make_args(tmp_path, fp16=True), train_dataset=rows)
    trainer.train()
    assert trainer.accelerator.mixed_precision == "fp16"
    assert trainer.fst_w0.dtype == torch.float32
    assert trainer.head.weight.norm().item() == pytest.approx(trainer.fst_w0_norm.item(), rel=1e-6)
    assert_same_weights(trainer.model, reference(model, rows, "fst", autocast=torch.float16), model, atol=1e-3)


@argument("torch_compile")
@pytest.mark.parametrize("mode", MODES)
def test_torch_compile(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_resnet()
    args = make_args(tmp_path, tuning_mode=mode, torch_compile=True, torch_compile_backend="aot_eager")
    trainer = FSTTrainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"
    assert_same_weights(trainer.model, reference(model, rows, mode), model)


@argument("gradient_checkpointing (activation_checkpointing)")
@pytest.mark.parametrize("mode", MODES)
def test_gradient_checkpointing(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_vit()
    trainer = FSTTrainer(
        model=model, args=make_args(tmp_path, tuning_mode=mode, gradient_checkpointing=True), train_dataset=rows
    )
    trainer.train()
    assert trainer.model.is_gradient_checkpointing
    assert_same_weights(trainer.model, reference(model, rows, mode), model)


# ----------------------------------------------------------------------------------------- data and callbacks
class _Recorder(TrainerCallback):
    def __init__(self):
        self.models: list = []
        self.optimizer_steps = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_steps += 1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.models.append(model)


@argument("callbacks=")
def test_callbacks_see_the_tuned_copy(tmp_path):
    model, recorder = tiny_resnet(), _Recorder()
    trainer = FSTTrainer(
        model=model, args=make_args(tmp_path, per_device_train_batch_size=8), train_dataset=random_image_rows(16),
        callbacks=[recorder],
    )  # fmt: skip
    trainer.train()
    assert recorder.optimizer_steps == trainer.state.global_step == 8
    assert len(recorder.models) == 8 and all(m is trainer.model for m in recorder.models)
    assert trainer.model is not model


def _renamed_rows(rows):
    return [{"image": r["pixel_values"], "target": r["labels"], "note": "x"} for r in rows]


def _renaming_collator(batch):
    return {
        "pixel_values": torch.stack([b["image"] for b in batch]),
        "labels": torch.tensor([b["target"] for b in batch]),
    }


@argument("data_collator=")
@pytest.mark.parametrize("mode", MODES)
def test_data_collator(tmp_path, mode):
    rows, model = random_image_rows(32), tiny_resnet()
    trainer = FSTTrainer(
        model=model, args=make_args(tmp_path, tuning_mode=mode), train_dataset=_renamed_rows(rows),
        data_collator=_renaming_collator,
    )  # fmt: skip
    trainer.train()
    assert_same_weights(trainer.model, reference(model, rows, mode), model)


@argument("label_names")
def test_label_names(tmp_path):
    rows, model = random_image_rows(32), tiny_resnet()

    def collate(batch):
        return {
            "pixel_values": torch.stack([b["image"] for b in batch]),
            "target": torch.tensor([b["target"] for b in batch]),
            "original_label": torch.zeros(len(batch), dtype=torch.long),
        }

    trainer = FSTTrainer(
        model=model, args=make_args(tmp_path, label_names=["target", "original_label"]),
        train_dataset=_renamed_rows(rows), data_collator=collate,
    )  # fmt: skip
    trainer.train()
    assert_same_weights(trainer.model, reference(model, rows, "fst"), model)
    with pytest.raises(ValueError, match="batches need a 'labels' key"):
        FSTTrainer(model=model, args=make_args(tmp_path), train_dataset=_renamed_rows(rows),
                   data_collator=lambda b: {"pixel_values": _renaming_collator(b)["pixel_values"]}).train()  # fmt: skip


@argument("compute_metrics=, preprocess_logits_for_metrics=")
def test_compute_metrics_and_preprocess_logits(tmp_path):
    rows = random_image_rows(24, seed=1)
    seen = {}

    def preprocess(logits, labels):
        seen.setdefault("logits_shape", tuple(logits.shape))
        return logits.argmax(-1)

    def metrics(eval_pred):
        seen["predictions"] = eval_pred.predictions
        return {"accuracy": float((eval_pred.predictions == eval_pred.label_ids).mean())}

    trainer = FSTTrainer(
        model=tiny_resnet(), args=make_args(tmp_path, per_device_eval_batch_size=10), train_dataset=rows,
        eval_dataset=rows, compute_metrics=metrics, preprocess_logits_for_metrics=preprocess,
    )  # fmt: skip
    trainer.train()
    result = trainer.evaluate()
    with torch.no_grad():
        logits = trainer.model.eval()(pixel_values=torch.stack([r["pixel_values"] for r in rows])).logits
    predictions = logits.argmax(-1)
    assert seen["logits_shape"] == (10, NUM_LABELS) and seen["predictions"].shape == (24,)
    assert torch.equal(torch.as_tensor(seen["predictions"]), predictions)
    labels = torch.tensor([r["labels"] for r in rows])
    assert result["eval_accuracy"] == pytest.approx((predictions == labels).float().mean().item())


def _backdoor_rows(rows, target: int = 0):
    """Rows with a bright corner patch, labelled as the target, carrying their true label for RA."""
    out = []
    for r in rows:
        x = r["pixel_values"].clone()
        x[:, -3:, -3:] = 3.0
        out.append({"pixel_values": x, "labels": target, "original_label": r["labels"]})
    return out


@argument("eval_strategy + backdoor metrics")
def test_periodic_backdoor_evaluation(tmp_path):
    from hf_fst.metrics import compute_backdoor_metrics

    train, test = random_image_rows(32), random_image_rows(40, seed=5)
    clean = [dict(r, original_label=r["labels"]) for r in test]
    backdoor = _backdoor_rows([r for r in test if r["labels"] != 0])
    args = make_args(tmp_path, eval_strategy="epoch", label_names=["labels", "original_label"], num_train_epochs=2)
    trainer = FSTTrainer(
        model=tiny_resnet(), args=args, train_dataset=train, eval_dataset={"clean": clean, "backdoor": backdoor},
        compute_metrics=compute_backdoor_metrics,
    )  # fmt: skip
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_backdoor_attack_success_rate" in e]
    assert [e["epoch"] for e in evals] == [1.0, 2.0]
    with torch.no_grad():
        model = trainer.model.eval()
        clean_pred = model(pixel_values=torch.stack([r["pixel_values"] for r in clean])).logits.argmax(-1)
        bd_pred = model(pixel_values=torch.stack([r["pixel_values"] for r in backdoor])).logits.argmax(-1)
    clean_acc = (clean_pred == torch.tensor([r["labels"] for r in clean])).float().mean().item()
    asr = (bd_pred == 0).float().mean().item()
    ra = (bd_pred == torch.tensor([r["original_label"] for r in backdoor])).float().mean().item()
    assert 0 < asr < 1 or 0 < ra < 1, "a constant predictor would make the comparison vacuous"
    last = [e for e in trainer.state.log_history if "eval_clean_accuracy" in e][-1]
    assert last["eval_clean_accuracy"] == pytest.approx(clean_acc)
    assert evals[-1]["eval_backdoor_attack_success_rate"] == pytest.approx(asr)
    assert evals[-1]["eval_backdoor_robust_accuracy"] == pytest.approx(ra)


@argument("load_best_model_at_end + metric_for_best_model")
@pytest.mark.parametrize("mode", MODES)
def test_load_best_model_at_end(tmp_path, mode):
    rows = random_image_rows(32)
    # "Best" = the highest training-set loss: the first epoch's, so the model kept is not the last one.
    args = make_args(
        tmp_path, tuning_mode=mode, num_train_epochs=3, eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="loss", greater_is_better=True, learning_rate=0.05,
    )  # fmt: skip
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    assert losses[0] == max(losses) and losses[-1] < losses[0]
    best = Path(trainer.state.best_model_checkpoint)
    assert best.name == "checkpoint-1"
    saved = load_file(best / "model.safetensors")
    last = load_file(Path(args.output_dir) / "checkpoint-3" / "model.safetensors")
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert any(not torch.equal(state[k], v) for k, v in last.items())
    assert (best / "fst_state.safetensors").is_file()


# ----------------------------------------------------------------------------------------------------- PEFT
def _lora_vit(modules_to_save=("classifier",)):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=list(modules_to_save))
    return get_peft_model(tiny_vit(), config)


@argument("PEFT model (LoRA on the backbone, head in modules_to_save)")
@pytest.mark.parametrize("mode", MODES)
def test_peft_lora_with_the_head_in_modules_to_save(tmp_path, mode):
    pytest.importorskip("peft")
    rows, model = random_image_rows(32), _lora_vit()
    trainer = FSTTrainer(model=model, args=make_args(tmp_path, tuning_mode=mode), train_dataset=rows)
    assert trainer.head_name.endswith("classifier.modules_to_save.default")
    trainer.train()
    trained = dict(trainer.model.named_parameters())

    def active_head(m):
        return m.get_submodule(trainer.head_name)

    expected = reference(model, rows, mode, head=active_head)
    assert_same_weights(trainer.model, expected, model)
    # Only LoRA weights and the head copy moved; the frozen original head and the backbone did not.
    start = dict(model.named_parameters())
    moved = {n for n, p in trained.items() if not torch.equal(p, start[n])}
    assert moved and all("lora_" in n or "modules_to_save" in n for n in moved)
    assert any("lora_" in n for n in moved)


@argument("PEFT model (LoRA on the backbone, head in modules_to_save)")
def test_peft_with_a_frozen_head_is_refused(tmp_path):
    pytest.importorskip("peft")
    with pytest.raises(ValueError, match="is frozen .*list it in modules_to_save"):
        FSTTrainer(model=_lora_vit(modules_to_save=()), args=make_args(tmp_path))


# -------------------------------------------------------------------------------------------------- refusals
@argument("model_init=")
def test_model_init_is_refused(tmp_path):
    with pytest.raises(ValueError, match="model_init is not supported by FSTTrainer.*pass model= instead"):
        FSTTrainer(model_init=tiny_resnet, args=make_args(tmp_path))


@argument("FSDP (fsdp=, an FSDP accelerate config)")
@pytest.mark.parametrize("mode", ["fst", "ft-init-projected"])
def test_fsdp_is_refused_before_training(tmp_path, monkeypatch, mode):
    # The penalty or the projection needs the whole head: refused before the Trainer (or a copy) is built, whether
    # FSDP comes from fsdp= or from an accelerate FSDP config (which sets ACCELERATE_USE_FSDP).
    settings = {"tuning_mode": "ft-init", "project_head_norm": True} if mode == "ft-init-projected" else {}
    refusal = r"^FSDP shards the head weight, .* run FST with DDP \(accelerate launch --multi_gpu\) instead of fsdp="
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")  # restored afterwards: accelerate sets it for the process
    with pytest.raises(ValueError, match=refusal):
        FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path, fsdp="full_shard", **settings))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "True")
    with pytest.raises(ValueError, match=refusal):
        FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path, **settings))


def test_fsdp_without_the_penalty_or_projection_is_left_to_the_trainer(tmp_path, monkeypatch):
    # Plain fine-tuning shards like any model: FSTTrainer lets it through, and on one CPU process the Trainer
    # itself refuses (FSDP needs a distributed launch). Its accelerator sets ACCELERATE_USE_FSDP for the whole
    # process, so the variable is restored afterwards.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    with pytest.raises(ValueError, match="fsdp only works in distributed training"):
        FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path, tuning_mode="ft", fsdp="full_shard"))


@argument("resume_from_checkpoint")
def test_resume_with_a_w0_of_another_shape_is_refused(tmp_path):
    rows = random_image_rows(16)
    args = make_args(tmp_path, per_device_train_batch_size=8, save_strategy="steps", save_steps=1, max_steps=1)
    FSTTrainer(model=tiny_resnet(), args=args, train_dataset=rows).train()
    other = FSTTrainer(model=tiny_resnet(num_labels=3), args=args, train_dataset=[dict(r, labels=0) for r in rows])
    with pytest.raises(ValueError, match=r"holds W0 of shape \(5, 16\) but head 'classifier.1' has \(3, 16\)"):
        other.train(resume_from_checkpoint=str(Path(args.output_dir) / "checkpoint-1"))


# ------------------------------------------------------------------------------------------ no work, no result
def test_empty_training_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="train_dataset is empty"):
        FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path), train_dataset=[])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_train_epochs=-1), r"^num_train_epochs=-1 is negative"),
        (dict(num_train_epochs=0, max_steps=0), r"^num_train_epochs=0 with max_steps=0 trains no step"),
        (dict(learning_rate=-0.1), r"^learning_rate=-0.1 must be > 0"),
        (dict(learning_rate=0.0), r"^learning_rate=0.0 must be > 0"),
        (dict(learning_rate=float("nan")), r"^learning_rate=nan is not a finite number"),
        (dict(learning_rate=True), r"^learning_rate=True is not a finite number"),  # a flag is not a number
        (dict(num_train_epochs="3"), r"^num_train_epochs='3' is not a finite number"),
        (dict(per_device_train_batch_size=0), r"^per_device_train_batch_size=0 must be a whole number >= 1"),
        (dict(per_device_eval_batch_size=-2), r"^per_device_eval_batch_size=-2 must be a whole number >= 1"),
        (dict(gradient_accumulation_steps=0), r"^gradient_accumulation_steps=0 must be a whole number >= 1"),
        (dict(max_steps=-3), r"^max_steps=-3 is below -1"),
        (dict(max_steps=-2), r"^max_steps=-2 is below -1"),
        (dict(seed=2**32), r"^seed=4294967296 must be a whole number in \[0, 2\*\*32\)"),
        (dict(logging_steps=-1), r"^logging_steps=-1 must be > 0"),
        (dict(logging_steps=0), r"^logging_steps=0 must be > 0"),
        (dict(eval_steps=-1), r"^eval_steps=-1 must be > 0"),
        (dict(adam_beta2=1.0), r"^adam_beta2=1.0 must be in \[0, 1\)"),
        (dict(weight_decay=-0.1), r"^weight_decay=-0.1 must be >= 0"),
        (dict(max_grad_norm=-1.0), r"^max_grad_norm=-1.0 must be >= 0"),
        (dict(label_smoothing_factor=1.0), r"^label_smoothing_factor=1.0 must be in \[0, 1\)"),
        (dict(adam_beta1=1.5), r"^adam_beta1=1.5 must be in \[0, 1\)"),
        (dict(adam_epsilon=0.0), r"^adam_epsilon=0.0 must be > 0"),
        (dict(seed=-1), r"^seed=-1 must be a whole number in \[0, 2\*\*32\)"),
        (dict(save_steps=0), r"^save_steps=0 must be > 0"),
        (dict(dataloader_num_workers=-1), r"^dataloader_num_workers=-1 must be >= 0"),
        (dict(save_total_limit=0), r"^save_total_limit=0 must be >= 1"),
        (dict(fst_alpha=-0.2), r"^fst_alpha=-0.2 must be a finite number >= 0"),
    ],
)
def test_bad_numbers_are_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        make_args(tmp_path, **overrides)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        dict(max_steps=1, num_train_epochs=0),
        dict(adam_beta1=0.0),
        dict(seed=0),
        dict(seed=2**32 - 1),
        dict(max_steps=-1),
        dict(logging_steps=0.5),
        dict(eval_steps=0),  # a fraction of the run; "as logging"
        dict(save_total_limit=1),  # the smallest limit that keeps a checkpoint
    ],
)
def test_numbers_at_the_edge_of_their_range_are_accepted(tmp_path, overrides):
    args = make_args(tmp_path, **overrides)
    assert all(getattr(args, name) == value for name, value in overrides.items())


def test_pickled_config_leaves_the_hub_token_out(tmp_path):
    # The Trainer saves (and pushes) training_args.bin, a pickle of the arguments: the token must not be in it.
    args = make_args(tmp_path, hub_token="hf_secret_token_123")
    assert b"hf_secret_token_123" not in pickle.dumps(args)
    state = args.__getstate__()  # what a pickle restores (not unpickled here: nothing is ever unpickled)
    assert state["hub_token"] is None and state["fst_alpha"] == args.fst_alpha
    assert args.hub_token == "hf_secret_token_123"  # the live config keeps it for the push itself


def test_first_non_finite_step_is_named_without_a_sync_per_step(tmp_path):
    losses: list[torch.Tensor] = []

    class Recording(FSTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                losses.append(loss.detach())
            return loss

    args = make_args(
        tmp_path, num_train_epochs=20, per_device_train_batch_size=8, learning_rate=1e12, logging_steps=50
    )
    trainer = Recording(model=tiny_resnet(), args=args, train_dataset=random_image_rows(16))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* at optimizer step (\d+) ") as err:
        trainer.train()
    first_bad = next(i for i, loss in enumerate(losses) if not torch.isfinite(loss)) + 1
    assert f"at optimizer step {first_bad} " in str(err.value)
    assert first_bad > 1, "the first step must be finite for the check to mean anything"
    assert trainer.state.global_step < 40
    assert not list(Path(args.output_dir).glob("checkpoint-*"))


@pytest.mark.parametrize(
    ("bad_step", "trigger", "found_at"),
    [
        (3, {"logging_steps": 4}, 4),
        (3, {"save_strategy": "steps", "save_steps": 4}, 4),
        (3, {"eval_strategy": "steps", "eval_steps": 4}, 4),
        (1, {}, 12),  # nothing logs, saves or evaluates: found at the end of the epoch, and step 1 is named
        (5, {"logging_steps": 6, "bad": "inf"}, 6),  # the bad value itself is reported
    ],
    ids=["log", "save", "evaluate", "epoch-end", "inf"],
)
def test_a_non_finite_loss_stops_before_the_step_is_logged_saved_or_evaluated(tmp_path, bad_step, trigger, found_at):
    calls, bad = [], trigger.pop("bad", "nan")

    def loss_func(outputs, labels, num_items_in_batch=None):
        calls.append(1)
        loss = F.cross_entropy(outputs.logits, labels)
        return loss * float(bad) if len(calls) == bad_step else loss

    settings = {"logging_steps": 100, "save_strategy": "no", "eval_strategy": "no", **trigger}
    args = make_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=4, **settings)
    rows = random_image_rows(48)  # 12 steps
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=rows, eval_dataset=rows[:8],
                         compute_loss_func=loss_func)  # fmt: skip
    with pytest.raises(FloatingPointError, match=rf"^non-finite training loss \({bad}\) at optimizer step {bad_step} "
                       rf"\(found at step {found_at}\)"):  # fmt: skip
        trainer.train()
    assert not list(Path(args.output_dir).glob("checkpoint-*"))  # nothing saved from a broken model
    assert not [e for e in trainer.state.log_history if "loss" in e or "eval_loss" in e]


def test_trainer_defaults_and_positional_train_arguments(tmp_path, monkeypatch):
    """As `Trainer`: no args gives a config writing to `trainer_output`; `optimizers=None` means none given; train's
    positional arguments (resume_from_checkpoint, trial, ignore_keys_for_eval) reach the Trainer."""
    monkeypatch.chdir(tmp_path)
    bare = FSTTrainer(model=tiny_resnet(), optimizers=None)
    assert type(bare.args) is FSTConfig and bare.args.output_dir == "trainer_output"
    processor = ConvNextImageProcessor(size={"shortest_edge": 16})  # saved beside the model, as `Trainer` does
    saver = FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path / "saved"), processing_class=processor)
    saver.save_model(str(tmp_path / "saved-model"))
    assert saver.processing_class is processor and (tmp_path / "saved-model" / "preprocessor_config.json").is_file()
    model = tiny_resnet()
    model.config.output_hidden_states = True  # predictions are (logits, hidden states) unless the key is ignored
    seen = []

    def metrics(prediction):
        seen.append(type(prediction.predictions))
        return {}

    rows = random_image_rows(16)
    args = make_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=8, eval_strategy="epoch")
    trainer = FSTTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows, compute_metrics=metrics)
    trainer.train(None, None, ["hidden_states"])
    trainer.train(ignore_keys_for_eval=["hidden_states"])  # and as a keyword
    assert seen == [np.ndarray, np.ndarray]  # the ignored key was dropped: logits alone


# -------------------------------------------------------------------------------------------- the contract table
def _marked_rows() -> set[str]:
    """Rows named by `trainer_argument` marks anywhere in the test suite."""
    rows = set()
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = getattr(func, "id", None) or getattr(func, "attr", None)
            if name in ("argument", "trainer_argument"):
                rows.add(ast.literal_eval(node.args[0]))
    return rows


def test_every_row_of_the_contract_has_a_test():
    names = [row.name for row in TRAINER_ARGUMENTS]
    marked = _marked_rows()
    assert set(names) <= marked, f"rows without a test: {set(names) - marked}"
    assert marked <= set(names), f"tests marked with rows the table lacks: {marked - set(names)}"


def test_readme_table_is_the_contract():
    readme = (REPO / "README.md").read_text()
    assert render_trainer_arguments_table() in readme
