"""Head lookup on many `AutoModelForImageClassification` architectures, built from tiny configs."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from hf_fst.heads import find_linear_head, project_weight_norm_, reinitialize_linear_

VIT_LIKE = dict(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)

# (config class, model class, tiny config kwargs, expected head path)
ARCHITECTURES = {
    "resnet": (tf.ResNetConfig, tf.ResNetForImageClassification, dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]), "classifier.1"),
    "regnet": (tf.RegNetConfig, tf.RegNetForImageClassification, dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8), "classifier.1"),
    "vit": (tf.ViTConfig, tf.ViTForImageClassification, dict(VIT_LIKE, intermediate_size=32), "classifier"),
    "deit": (tf.DeiTConfig, tf.DeiTForImageClassification, dict(VIT_LIKE, intermediate_size=32), "classifier"),
    "beit": (tf.BeitConfig, tf.BeitForImageClassification, dict(VIT_LIKE, intermediate_size=32), "classifier"),
    "dinov2": (tf.Dinov2Config, tf.Dinov2ForImageClassification, VIT_LIKE, "classifier"),
    "convnext": (tf.ConvNextConfig, tf.ConvNextForImageClassification, dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2), "classifier"),
    "swin": (tf.SwinConfig, tf.SwinForImageClassification, dict(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2), "classifier"),
    "efficientnet": (tf.EfficientNetConfig, tf.EfficientNetForImageClassification, dict(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=32), "classifier"),
    "mobilenet_v2": (tf.MobileNetV2Config, tf.MobileNetV2ForImageClassification, dict(image_size=16, depth_multiplier=0.25), "classifier"),
    "mobilenet_v1": (tf.MobileNetV1Config, tf.MobileNetV1ForImageClassification, dict(image_size=16, depth_multiplier=0.25), "classifier"),
    "levit": (tf.LevitConfig, tf.LevitForImageClassification, dict(image_size=32, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3], depths=[1, 1, 1], key_dim=[8, 8, 8], patch_size=16), "classifier.linear"),
}  # fmt: skip


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_finds_the_head(arch):
    config_cls, model_cls, kwargs, expected = ARCHITECTURES[arch]
    model = model_cls(config_cls(num_labels=7, **kwargs))
    name, head = find_linear_head(model)
    assert name == expected
    assert isinstance(head, torch.nn.Linear) and head.out_features == 7
    assert model.get_submodule(name) is head


def test_head_of_the_same_size_as_a_hidden_layer():
    # num_labels == hidden_size: only the layer outside the backbone is the head.
    config_cls, model_cls, kwargs, _ = ARCHITECTURES["vit"]
    model = model_cls(config_cls(num_labels=16, **kwargs))
    assert find_linear_head(model)[0] == "classifier"


@pytest.mark.parametrize(
    ("model_cls", "config", "pick"),
    [
        (tf.DeiTForImageClassificationWithTeacher, tf.DeiTConfig(num_labels=4, intermediate_size=32, **VIT_LIKE), "cls_classifier"),
        (tf.LevitForImageClassificationWithTeacher, tf.LevitConfig(num_labels=4, **ARCHITECTURES["levit"][2]), "classifier"),
    ],
)  # fmt: skip
def test_two_heads_are_ambiguous(model_cls, config, pick):
    model = model_cls(config)
    with pytest.raises(ValueError, match="several candidate heads.*head_name="):
        find_linear_head(model)
    name, head = find_linear_head(model, head_name=pick)
    assert isinstance(head, torch.nn.Linear) and name.startswith(pick)


def test_head_name_resolves_a_container():
    model = ARCHITECTURES["resnet"][1](ARCHITECTURES["resnet"][0](num_labels=3, **ARCHITECTURES["resnet"][2]))
    assert find_linear_head(model, head_name="classifier")[0] == "classifier.1"


def test_head_name_not_a_single_linear():
    model = ARCHITECTURES["vit"][1](ARCHITECTURES["vit"][0](num_labels=3, **ARCHITECTURES["vit"][2]))
    with pytest.raises(ValueError, match="head_name='vit.layers'.*exactly one nn.Linear"):
        find_linear_head(model, head_name="vit.layers")


def test_plain_module():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with pytest.raises(ValueError, match="several candidate heads"):
        find_linear_head(model)
    assert find_linear_head(model, head_name="2")[0] == "2"


def test_reinitialize_is_seeded_and_bounded():
    layer = torch.nn.Linear(64, 10)
    reinitialize_linear_(layer, torch.Generator().manual_seed(0))
    first = layer.weight.detach().clone()
    assert first.abs().max() <= 1 / 8 and first.abs().max() > 0.1
    reinitialize_linear_(layer, torch.Generator().manual_seed(0))
    assert torch.equal(first, layer.weight)


def test_projection():
    weight = torch.randn(10, 20)
    project_weight_norm_(weight, 3.5)
    assert weight.norm().item() == pytest.approx(3.5, rel=1e-6)


class _TwoHeads(torch.nn.Module):
    """A plain module with two label-sized linears outside any backbone: only the name tells the head apart."""

    def __init__(self) -> None:
        super().__init__()
        self.config = tf.PretrainedConfig(num_labels=3)
        self.body = torch.nn.Linear(4, 8)
        self.projection = torch.nn.Linear(8, 3)
        self.classifier = torch.nn.Linear(8, 3)


def test_a_head_word_breaks_a_tie_and_no_word_is_refused():
    model = _TwoHeads()
    assert find_linear_head(model) == ("classifier", model.classifier)
    model.other = model.classifier
    del model.classifier
    with pytest.raises(ValueError, match=r"several candidate heads \(projection, other\); pass head_name="):
        find_linear_head(model)
    # The word counts in the layer's own name or its parent's (`classifier.1`), not further up the path.
    nested = torch.nn.Module()
    nested.projection = torch.nn.Linear(4, 3)
    nested.classifier = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(4, 3))
    assert find_linear_head(nested)[0] == "classifier.1"
    deep = torch.nn.Module()
    deep.projection = torch.nn.Linear(4, 3)
    deep.classifier = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    with pytest.raises(ValueError, match=r"several candidate heads \(projection, classifier\.0\.0\)"):
        find_linear_head(deep)


class _Config:
    def __init__(self, num_labels):
        self.num_labels = num_labels


class _Backboned(torch.nn.Module):
    """A backbone holding a layer of the head's size, and a head whose name has no head word (`proj`)."""

    base_model_prefix = "body"

    def __init__(self, num_labels=3, extra_out=None):
        super().__init__()
        self.config = _Config(num_labels)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, num_labels))
        self.proj = torch.nn.Linear(num_labels, num_labels)
        if extra_out is not None:
            self.side = torch.nn.Linear(num_labels, extra_out)


def test_layers_inside_the_backbone_are_never_the_head():
    assert find_linear_head(_Backboned())[0] == "proj"
    nested = torch.nn.Module()
    nested.inner = _Backboned()  # found by identity, whatever the backbone's dotted name is
    nested.base_model_prefix, nested.body = "body", nested.inner.body
    assert find_linear_head(nested)[0] == "inner.proj"


def test_only_layers_with_num_labels_outputs_are_candidates():
    assert find_linear_head(_Backboned(num_labels=3, extra_out=5))[0] == "proj"
    no_config = _Backboned(num_labels=3, extra_out=5)
    del no_config.config  # without config.num_labels both layers outside the backbone are candidates
    with pytest.raises(ValueError, match=r"several candidate heads \(proj, side\)"):
        find_linear_head(no_config)
    zero = _Backboned(num_labels=3, extra_out=5)
    zero.config.num_labels = 0  # 0 is "unknown", not a size to match
    with pytest.raises(ValueError, match=r"several candidate heads \(proj, side\)"):
        find_linear_head(zero)
    wrong = _Backboned(num_labels=3, extra_out=5)
    wrong.config.num_labels = 7  # the refusal names the size it looked for
    with pytest.raises(ValueError, match=r"^_Backboned has no linear classification head with out_features=7; "):
        find_linear_head(wrong)
    with pytest.raises(ValueError, match=r"^Sequential has no linear classification head; pass head_name="):
        find_linear_head(torch.nn.Sequential(torch.nn.ReLU()))  # no size known, none named


def test_peft_head_is_the_active_adapters_copy():
    peft = pytest.importorskip("peft")
    config_cls, model_cls, kwargs, _ = ARCHITECTURES["vit"]
    model = model_cls(config_cls(num_labels=3, **kwargs))
    lora = peft.LoraConfig(target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"], r=2)
    wrapped = peft.get_peft_model(model, lora)
    wrapped.add_adapter("second", lora)
    name, head = find_linear_head(wrapped)
    assert name.endswith("classifier.modules_to_save.default") and head.out_features == 3
    wrapped.set_adapter("second")
    assert find_linear_head(wrapped)[0].endswith("classifier.modules_to_save.second")


class _SingleAdapterWrapper(torch.nn.Module):
    """The shape of a PEFT `modules_to_save` wrapper from releases that name one `active_adapter` and have no
    `active_adapters` (the installed PEFT always has the latter, so its real wrapper never reaches this rule)."""

    def __init__(self, active: str):
        super().__init__()
        self.original_module = torch.nn.Linear(4, 3)
        self.modules_to_save = torch.nn.ModuleDict({"default": torch.nn.Linear(4, 3), "second": torch.nn.Linear(4, 3)})
        self.active_adapter = active


class _WrappedClassifier(torch.nn.Module):
    def __init__(self, active: str):
        super().__init__()
        self.body = torch.nn.ReLU()
        self.classifier = _SingleAdapterWrapper(active)


@pytest.mark.parametrize("active", ["default", "second"])
def test_a_wrapper_with_one_active_adapter_name_trains_that_copy(active):
    # Nested, and as the model itself (no name prefix): the frozen original and the other copy are never the head.
    assert find_linear_head(_WrappedClassifier(active))[0] == f"classifier.modules_to_save.{active}"
    assert find_linear_head(_SingleAdapterWrapper(active))[0] == f"modules_to_save.{active}"


def test_a_module_dict_named_modules_to_save_without_an_original_is_not_a_peft_wrapper():
    model = torch.nn.Module()
    model.modules_to_save = torch.nn.ModuleDict({"task": torch.nn.Linear(4, 3)})  # a user's own naming
    assert find_linear_head(model)[0] == "modules_to_save.task"
