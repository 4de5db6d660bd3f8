"""FSTTrainer against the paper's description: equivalence, modes, projection, resume, errors."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tiny_models import NUM_LABELS, random_image_rows, tiny_resnet, tiny_vit
from tiny_models import fst_args as make_args
from transformers import TrainerCallback

from hf_fst import FSTConfig, FSTTrainer
from hf_fst.tuning import FST_STATE_NAME, TUNING_MODES


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def reference_tuning(model, rows, mode: str, alpha: float, steps: int, lr: float, seed: int, project: bool):
    """The paper's procedure written out in plain PyTorch: one full batch per optimizer step."""
    model = copy.deepcopy(model).train()
    head = model.classifier[1]
    w0 = head.weight.detach().clone()
    w0_norm = w0.norm()
    if mode in ("fst", "ft-init", "fe-tuning"):
        generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(head.in_features)
        with torch.no_grad():
            head.weight.copy_(torch.empty(head.weight.shape).uniform_(-bound, bound, generator=generator))
            head.bias.copy_(torch.empty(head.bias.shape).uniform_(-bound, bound, generator=generator))
    for name, p in model.named_parameters():
        is_head = name.startswith("classifier.")
        p.requires_grad_(not ((mode == "lp" and not is_head) or (mode == "fe-tuning" and is_head)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    x = torch.stack([r["pixel_values"] for r in rows])
    y = torch.tensor([r["labels"] for r in rows])
    for _ in range(steps):
        loss = F.cross_entropy(model(pixel_values=x).logits, y)
        if mode == "fst":
            loss = loss + alpha * (head.weight * w0).sum()
        loss.backward()
        optimizer.step()
        if project:
            with torch.no_grad():
                head.weight.mul_(w0_norm / head.weight.norm())
        optimizer.zero_grad()
        scheduler.step()
    return model


@pytest.mark.parametrize("mode", TUNING_MODES)
def test_matches_plain_pytorch_loop(tmp_path, mode):
    rows = random_image_rows(32)
    model = tiny_resnet()
    steps = 4
    args = make_args(
        tmp_path, tuning_mode=mode, fst_alpha=0.5, num_train_epochs=steps, per_device_train_batch_size=32, seed=3
    )
    trainer = FSTTrainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    expected = reference_tuning(
        model,
        rows,
        mode,
        alpha=0.5,
        steps=steps,
        lr=0.01,
        seed=3,
        project=mode == "fst",  # the paper's policy
    )
    got = params(trainer.model)
    moved = 0.0
    for name, ref_param in expected.named_parameters():
        torch.testing.assert_close(got[name], ref_param.detach(), atol=1e-5, rtol=0, msg=f"{mode}: {name}")
        moved = max(moved, (ref_param.detach() - dict(model.named_parameters())[name].detach()).abs().max().item())
    assert moved > 1e-3, "training did not change the model: the comparison would be vacuous"


@pytest.mark.parametrize("mode", TUNING_MODES)
def test_mode_trains_exactly_its_parameters(tmp_path, mode):
    model = tiny_resnet()
    original = params(model)
    trainer = FSTTrainer(
        model=model,
        args=make_args(tmp_path, tuning_mode=mode, num_train_epochs=1, per_device_train_batch_size=8),
        train_dataset=random_image_rows(16),
    )
    start = params(trainer.model)
    head_reset = not torch.equal(start["classifier.1.weight"], original["classifier.1.weight"])
    assert head_reset == (mode in ("fst", "ft-init", "fe-tuning"))
    assert torch.equal(start["classifier.1.bias"], original["classifier.1.bias"]) != head_reset
    body = [n for n in start if not n.startswith("classifier.")]
    assert all(torch.equal(start[n], original[n]) for n in body), "construction must not touch the backbone"

    trainer.train()
    end = params(trainer.model)
    changed = {n for n in end if not torch.equal(end[n], start[n])}
    head = {"classifier.1.weight", "classifier.1.bias"}
    expected = {"lp": head, "fe-tuning": set(body)}.get(mode, head | set(body))
    # Every trainable tensor moves (a BN beta with zero gradient would be the only excuse: none here).
    assert changed == expected
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == expected
    # The caller's model is untouched.
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())


class _NormRecorder(TrainerCallback):
    def __init__(self, trainer_ref: list):
        self.trainer_ref = trainer_ref
        self.norms: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.norms.append(self.trainer_ref[0].head.weight.norm().item())


@pytest.mark.parametrize("accumulation", [1, 2, 3])
def test_head_norm_after_every_step(tmp_path, accumulation):
    ref: list = []
    recorder = _NormRecorder(ref)
    args = make_args(
        tmp_path,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        learning_rate=0.1,
        fst_alpha=1.0,
    )
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(24), callbacks=[recorder])
    ref.append(trainer)
    w0_norm = trainer.fst_w0_norm.item()
    assert abs(trainer.head.weight.norm().item() - w0_norm) > 1e-3  # the fresh head starts off the sphere
    trainer.train()
    assert len(recorder.norms) == trainer.state.global_step == 2 * math.ceil(6 / accumulation)
    for norm in recorder.norms:
        assert norm == pytest.approx(w0_norm, rel=1e-6)


def test_loss_parts_are_logged(tmp_path):
    args = make_args(tmp_path, num_train_epochs=2, per_device_train_batch_size=8, logging_steps=1, fst_alpha=0.3)
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(16))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    for entry in logs:
        assert entry["loss"] == pytest.approx(entry["ce_loss"] + entry["fst_penalty"], abs=1e-3)
        assert entry["fst_penalty"] != 0


def test_baseline_logs_no_penalty(tmp_path):
    args = make_args(tmp_path, tuning_mode="ft", num_train_epochs=1, per_device_train_batch_size=8, logging_steps=1)
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(16))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs and all("fst_penalty" not in e and e["loss"] == pytest.approx(e["ce_loss"], abs=1e-4) for e in logs)


def test_projection_option_in_every_mode(tmp_path):
    args = make_args(tmp_path, tuning_mode="ft", project_head_norm=True, num_train_epochs=1, learning_rate=0.5)
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(16))
    trainer.train()
    assert trainer.head.weight.norm().item() == pytest.approx(trainer.fst_w0_norm.item(), rel=1e-6)
    plain = FSTTrainer(
        model=tiny_resnet(),
        args=make_args(tmp_path, tuning_mode="ft", learning_rate=0.5, num_train_epochs=1),
        train_dataset=random_image_rows(16),
    )
    plain.train()
    assert abs(plain.head.weight.norm().item() - plain.fst_w0_norm.item()) > 1e-4


class _StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_gives_same_weights(tmp_path):
    rows = random_image_rows(40)
    common = dict(num_train_epochs=3, per_device_train_batch_size=8, save_strategy="steps", save_steps=7)
    model = tiny_resnet()

    full = FSTTrainer(model=model, args=make_args(tmp_path / "full", **common), train_dataset=rows)
    full.train()

    interrupted = FSTTrainer(
        model=model, args=make_args(tmp_path / "resume", **common), train_dataset=rows, callbacks=[_StopAt(7)]
    )
    interrupted.train()
    checkpoint = tmp_path / "resume" / "out" / "checkpoint-7"
    assert (checkpoint / FST_STATE_NAME).is_file()
    assert interrupted.state.global_step == 7
    # The FST state says, for whoever inspects a checkpoint, which head and setting it belongs to.
    with safe_open(str(checkpoint / FST_STATE_NAME), framework="pt") as handle:
        assert handle.metadata() == {"head_name": "classifier.1", "tuning_mode": "fst", "fst_alpha": "0.2",
                                     "normalize_fst_alpha": "False"}  # fmt: skip

    # W0 must come from the checkpoint, not from whatever model the resumed trainer is given.
    other = tiny_resnet(seed=1)
    resumed = FSTTrainer(model=other, args=make_args(tmp_path / "resume", **common), train_dataset=rows)
    assert not torch.equal(resumed.fst_w0, full.fst_w0)
    resumed.train(resume_from_checkpoint=True)
    assert torch.equal(resumed.fst_w0, full.fst_w0)
    assert resumed.state.global_step == full.state.global_step == 15
    expected = params(full.model)
    for name, value in params(resumed.model).items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0, msg=name)


def test_resume_from_foreign_checkpoint_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    trainer = FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path), train_dataset=random_image_rows(8))
    with pytest.raises(ValueError, match=f"resume_from_checkpoint=.*{FST_STATE_NAME}"):
        trainer.train(resume_from_checkpoint=str(folder))


def test_resume_true_needs_a_checkpoint_and_refuses_a_foreign_one(tmp_path):
    """`resume_from_checkpoint=True` as in `Trainer`: an error when there is nothing to resume (never a silent fresh
    start), and the FST refusal when the only checkpoint in output_dir was not written by FSTTrainer."""
    args = make_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=8)
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(8))
    with pytest.raises(ValueError, match="No valid checkpoint found"):
        trainer.train(resume_from_checkpoint=True)
    (Path(args.output_dir) / "checkpoint-3").mkdir(parents=True)  # a plain Trainer's: no FST state
    with pytest.raises(ValueError, match=f"checkpoint-3' has no {FST_STATE_NAME}"):
        trainer.train(resume_from_checkpoint=True)


def test_vit_head_and_penalty(tmp_path):
    args = make_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=8)
    trainer = FSTTrainer(model=tiny_vit(), args=args, train_dataset=random_image_rows(16))
    assert trainer.head_name == "classifier"
    expected = args.fst_alpha * (trainer.head.weight * trainer.fst_w0).sum()
    torch.testing.assert_close(trainer.fst_penalty(), expected)
    trainer.train()
    assert trainer.head.weight.norm().item() == pytest.approx(trainer.fst_w0_norm.item(), rel=1e-6)


def test_subclass_overrides(tmp_path):
    calls = {"penalty": 0, "project": 0}

    class SquaredPenaltyTrainer(FSTTrainer):
        def fst_penalty(self):
            calls["penalty"] += 1
            return self.args.fst_alpha * (self.head.weight * self.fst_w0).sum().pow(2)

        def project_head(self):
            calls["project"] += 1
            super().project_head()

    args = make_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=8)
    trainer = SquaredPenaltyTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(24))
    trainer.train()
    assert calls == {"penalty": 3, "project": 3}


# ------------------------------------------------------------------------------------------- errors
def test_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match=r"tuning_mode='finetune'.*fst, ft, lp, ft-init, fe-tuning"):
        make_args(tmp_path, tuning_mode="finetune")


def test_mode_spellings_are_normalised(tmp_path):
    assert make_args(tmp_path, tuning_mode="FT_init").tuning_mode == "ft-init"


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf")])
def test_bad_alpha(tmp_path, alpha):
    with pytest.raises(ValueError, match="fst_alpha"):
        make_args(tmp_path, fst_alpha=alpha)


def test_model_without_head(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    backbone = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    with pytest.raises(ValueError, match="no linear classification head.*head_name="):
        FSTTrainer(model=backbone, args=make_args(tmp_path))


def test_unknown_head_name(tmp_path):
    with pytest.raises(ValueError, match="head_name='decoder'"):
        FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path, head_name="decoder"))


@pytest.mark.parametrize("mode", ["fst", "lp", "ft-init"])
def test_frozen_head_is_refused_where_the_head_must_train(tmp_path, mode):
    model = tiny_resnet()
    model.classifier.requires_grad_(False)
    with pytest.raises(ValueError, match=f"tuning_mode='{mode}' trains the head, but head 'classifier.1' is frozen"):
        FSTTrainer(model=model, args=make_args(tmp_path, tuning_mode=mode))


def test_frozen_head_is_kept_frozen_in_ft(tmp_path):
    model = tiny_resnet()
    model.classifier.requires_grad_(False)
    trainer = FSTTrainer(model=model, args=make_args(tmp_path, tuning_mode="ft", num_train_epochs=1),
                         train_dataset=random_image_rows(8))  # fmt: skip
    trainer.train()
    assert torch.equal(trainer.head.weight, model.classifier[1].weight)


def test_everything_frozen(tmp_path):
    model = tiny_resnet()
    model.resnet.requires_grad_(False)
    with pytest.raises(ValueError, match="tuning_mode='fe-tuning' leaves no trainable parameter"):
        FSTTrainer(model=model, args=make_args(tmp_path, tuning_mode="fe-tuning"))


def test_plain_training_arguments_are_refused(tmp_path):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="FSTConfig"):
        FSTTrainer(model=tiny_resnet(), args=TrainingArguments(output_dir=str(tmp_path)))


def test_defaults_follow_the_paper(tmp_path):
    args = FSTConfig(output_dir=str(tmp_path))
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (0.01, 10, 128)
    assert (args.optim, args.optim_args, args.lr_scheduler_type) == ("sgd", "momentum=0.9", "cosine")
    assert (args.weight_decay, args.max_grad_norm, args.tuning_mode, args.fst_alpha) == (0.0, 0.0, "fst", 0.2)
    assert args.projects_head_norm and not FSTConfig(output_dir=str(tmp_path), tuning_mode="ft").projects_head_norm
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(8))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    assert NUM_LABELS == trainer.head.out_features


def test_evaluation_loss_is_plain_cross_entropy(tmp_path):
    rows = random_image_rows(16)
    args = make_args(tmp_path, fst_alpha=5.0, per_device_eval_batch_size=16)
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=rows, eval_dataset=rows)
    metrics = trainer.evaluate()
    with torch.no_grad():
        x = torch.stack([r["pixel_values"] for r in rows])
        y = torch.tensor([r["labels"] for r in rows])
        expected = F.cross_entropy(trainer.model.eval()(pixel_values=x).logits, y).item()
    assert metrics["eval_loss"] == pytest.approx(expected, abs=1e-5)


def test_non_finite_loss_stops_with_the_step(tmp_path):
    args = make_args(tmp_path, num_train_epochs=5, per_device_train_batch_size=8, learning_rate=1e12)
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(16))
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* at optimizer step \d+ .*learning_rate"):
        trainer.train()
    assert trainer.state.global_step < 10


def test_the_projection_policy_per_mode(tmp_path):
    """Unset: only fst projects; True / False: every mode does / none does (the official code projects in all)."""
    expected = {"fst": True, "ft": False, "lp": False, "ft-init": False, "fe-tuning": False}
    assert {m: make_args(tmp_path, tuning_mode=m).projects_head_norm for m in TUNING_MODES} == expected
    assert all(make_args(tmp_path, tuning_mode=m, project_head_norm=True).projects_head_norm for m in TUNING_MODES)
    assert not any(
        make_args(tmp_path, tuning_mode=m, project_head_norm=False).projects_head_norm for m in TUNING_MODES
    )


class _PartRecorder(FSTTrainer):
    """Keeps every per-step loss part as it is added, to check what the logs average."""

    def _add_part(self, key, value):
        self.__dict__.setdefault("steps", {}).setdefault(key, []).append(float(value))
        super()._add_part(key, value)


def test_logged_loss_parts_are_the_mean_over_the_logging_window(tmp_path):
    args = make_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=4, logging_steps=3, fst_alpha=0.3)
    trainer = _PartRecorder(model=tiny_resnet(), args=args, train_dataset=random_image_rows(16))
    trainer.train()  # 12 steps: logs after steps 3, 6, 9, 12
    logs = [entry for entry in trainer.state.log_history if "ce_loss" in entry]
    assert [entry["step"] for entry in logs] == [3, 6, 9, 12]
    for key in ("ce_loss", "fst_penalty"):
        values = trainer.steps[key]
        assert len(values) == 12 and len(set(values)) > 3  # the parts change from step to step
        for window, entry in enumerate(logs):
            assert entry[key] == pytest.approx(sum(values[3 * window : 3 * window + 3]) / 3, abs=2e-6)


def test_last_complete_checkpoint_skips_cut_and_foreign_folders(tmp_path):
    trainer = FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path), train_dataset=random_image_rows(8))
    assert trainer.last_complete_checkpoint() is None  # no output folder yet
    for name, complete in [("checkpoint-3", True), ("checkpoint-12", True), ("checkpoint-20", False),
                           ("checkpoint-x", True), ("old-checkpoint-30", True), ("checkpoint-9", True)]:  # fmt: skip
        folder = tmp_path / "out" / name
        folder.mkdir(parents=True)
        if complete:
            (folder / FST_STATE_NAME).write_bytes(b"")
    (tmp_path / "out" / "checkpoint-40").write_text("a file, not a folder")
    assert trainer.last_complete_checkpoint() == str(tmp_path / "out" / "checkpoint-12")


def test_fst_state_round_trip_keeps_a_search_only_for_auto_runs(tmp_path):
    from hf_fst.tuning.search import StrengthSearch

    writer = FSTTrainer(
        model=tiny_resnet(), args=make_args(tmp_path, tuning_mode="fst"), train_dataset=random_image_rows(8)
    )
    writer.fst_alpha_search = StrengthSearch(0.02, 12, 0.9, 4.0, [], chosen=2.0, budget_met=True)
    writer.fst_w0 = writer.fst_w0 + 1.0
    writer.save_fst_state(str(tmp_path))
    for alpha, expected in ((0.2, None), ("auto", writer.fst_alpha_search)):
        args = make_args(tmp_path, tuning_mode="fst", fst_alpha=alpha)
        reader = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(8))
        reader.load_fst_state(str(tmp_path))
        assert reader.fst_alpha_search == expected  # a numeric alpha never takes over a stored search
        torch.testing.assert_close(reader.fst_w0, writer.fst_w0)
        assert reader.fst_w0.dtype == torch.float32 and reader.fst_w0_norm.dtype == torch.float32


class PlainClassifier(torch.nn.Module):
    """A torch module that returns bare logits, as a user's own network may."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 8), torch.nn.ReLU())
        self.classifier = torch.nn.Linear(8, NUM_LABELS)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(pixel_values))


@pytest.mark.parametrize("kind", ["tensor", "tuple"])
def test_models_returning_a_tensor_or_a_tuple_train_and_predict(tmp_path, kind):
    """Trainer.prediction_step drops a tuple's first item as the loss: FSTTrainer must not lose the logits."""
    if kind == "tensor":
        model = PlainClassifier()
        w0 = model.classifier.weight.detach().clone()
    else:
        model = tiny_resnet()
        model.config.return_dict = False
        w0 = model.classifier[1].weight.detach().clone()
    rows = random_image_rows(20)
    args = make_args(tmp_path, label_names=["labels"], num_train_epochs=2, per_device_train_batch_size=4)
    trainer = FSTTrainer(model=model, args=args, train_dataset=rows, eval_dataset=rows)
    trainer.train()
    model = trainer.model
    weight = model.classifier.weight if kind == "tensor" else model.classifier[1].weight
    assert not torch.allclose(weight, w0)  # the head was found and re-initialised ...
    assert weight.norm().item() == pytest.approx(w0.norm().item(), rel=1e-5)  # ... and projected back
    output = trainer.predict(rows)
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=torch.stack([r["pixel_values"] for r in rows]))
    logits = out if kind == "tensor" else out[0]
    assert output.predictions.shape == (20, NUM_LABELS)
    torch.testing.assert_close(torch.as_tensor(output.predictions), logits, atol=1e-5, rtol=1e-5)
    labels = torch.tensor([r["labels"] for r in rows])
    assert output.metrics["test_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)


def test_the_new_head_is_drawn_from_the_seed_alone(tmp_path):
    """The re-drawn head depends on `seed`, not on the global RNG (which the Trainer seeds and checkpoints)."""
    trainer = FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path, tuning_mode="fst", seed=11))
    first = trainer.head.weight.detach().clone(), trainer.head.bias.detach().clone()
    torch.manual_seed(1234)
    torch.rand(1000)  # move the global RNG on
    with torch.no_grad():
        trainer.reinitialize_head()
    assert torch.equal(trainer.head.weight, first[0]) and torch.equal(trainer.head.bias, first[1])
    other = FSTTrainer(model=tiny_resnet(), args=make_args(tmp_path, tuning_mode="fst", seed=12))
    assert not torch.equal(other.head.weight, first[0])  # and the seed does decide it
    assert not torch.equal(first[0], tiny_resnet().classifier[1].weight)  # re-drawn, not the input head
