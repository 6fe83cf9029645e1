"""Pruning per branch, heads, the fusion coupling, sparsity, recovery, save/load, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mmedge.cli import app
from mmedge.model import load_torch_model
from mmedge.prune.structured import apply_sparsity, remove_masks, structured_prune
from mmedge.recipe import PruneConfig, load_recipe
from tests.conftest import REFERENCE, tiny_feeds, write_recipe

pytest.importorskip("torch_pruning")
runner = CliRunner()
FEEDS = {k: torch.from_numpy(v) for k, v in tiny_feeds(2, 8, 16).items()}


def _pruned(
    tmp_path: Path, factory: str = "tests.models:tiny_fusion", **prune: Any
) -> torch.nn.Module:
    recipe = load_recipe(write_recipe(tmp_path, {"model.factory": factory}))
    model = load_torch_model(recipe)
    return structured_prune(model, FEEDS, recipe, PruneConfig(round_to=2, **prune)).model


def test_only_the_named_branch_shrinks(tmp_path: Path) -> None:
    model = _pruned(tmp_path, branches={"image": 0.5})
    image = model.image_encoder
    assert [image.features[i].out_channels for i in (0, 3)] == [2, 4]
    assert image.proj.out_features == 4
    assert model.text_encoder.layers[0].attn.q_proj.out_features == 8
    assert model.text_encoder.layers[0].attn.num_heads == 2
    assert model.audio_encoder.features[0].out_channels == 8
    assert model.head.mlp[0].out_features == 16
    # The fusion head's input follows the image branch's narrower output.
    assert model.head.mlp[0].in_features == 4 + 8 + 8
    assert model(**FEEDS).shape == (2, 5)


def test_attention_heads_are_pruned_whole(tmp_path: Path) -> None:
    model = _pruned(tmp_path, branches={"text": 0.5})
    attn = model.text_encoder.layers[0].attn
    assert attn.num_heads == 1
    assert attn.q_proj.out_features == attn.k_proj.out_features == attn.v_proj.out_features == 4
    assert attn.out_proj.in_features == 4
    assert model(**FEEDS).shape == (2, 5)


def test_multihead_attention_modules_lose_width(tmp_path: Path) -> None:
    # Torch-Pruning cannot remove whole heads from nn.MultiheadAttention (packed q/k/v); it
    # narrows every head instead, consistently with the embedding and the projection.
    model = _pruned(tmp_path, "tests.models:tiny_mha", branches={"text": 0.5})
    attn = model.text_encoder.attn
    assert (attn.embed_dim, attn.num_heads, attn.head_dim) == (4, 2, 2)
    assert tuple(attn.in_proj_weight.shape) == (12, 4)
    assert model.text_encoder.tokens.embedding_dim == 4
    assert model(**FEEDS).shape == (2, 5)


def test_every_branch_keeps_the_fusion_head_consistent(tmp_path: Path) -> None:
    model = _pruned(tmp_path, ratio=0.5)
    widths = [
        model.image_encoder.proj.out_features,
        model.text_encoder.proj.out_features,
        model.audio_encoder.proj.out_features,
    ]
    assert widths == [4, 4, 4]
    assert model.head.mlp[0].in_features == sum(widths)
    assert model.head.classifier.out_features == 5, "the model's output is protected"
    assert model(**FEEDS).shape == (2, 5)


def test_protected_modules_keep_their_width(tmp_path: Path) -> None:
    model = _pruned(tmp_path, ratio=0.5, protect=["image_encoder.proj"])
    assert model.image_encoder.proj.out_features == 8
    assert model.image_encoder.features[0].out_channels == 2


def test_clip_style_parameter_is_followed(tmp_path: Path) -> None:
    model = _pruned(tmp_path, "tests.models:clip_style", branches={"text": 0.5})
    assert model.text_encoder.positional_embedding.shape == (16, 4)
    assert model(**FEEDS).shape == (2, 5)


def test_taylor_importance(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    model = load_torch_model(recipe)
    calls = []

    def gradients(work: torch.nn.Module) -> None:
        calls.append(1)
        torch.nn.functional.cross_entropy(work(**FEEDS), torch.tensor([0, 1])).backward()

    result = structured_prune(
        model, FEEDS, recipe, PruneConfig(round_to=2, ratio=0.5, importance="taylor"), gradients
    )
    assert calls and result.model.image_encoder.proj.out_features == 4


def test_two_four_masks(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    model = load_torch_model(recipe)
    from mmedge.recipe import SparsityConfig

    info = apply_sparsity(model, SparsityConfig(mode="2:4"))
    remove_masks(model)
    assert info["layers"] > 0
    checked = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d):
            flat = module.weight.detach().reshape(module.weight.shape[0], -1)
            if flat.shape[1] % 4:
                continue
            zeros = (flat.reshape(flat.shape[0], -1, 4) == 0).sum(2)
            assert (zeros == 2).all(), "exactly 2 of every 4 weights are zero"
            checked += 1
    assert checked == info["layers"]
    assert not any(n.endswith("weight_orig") for n, _ in model.named_parameters()), (
        "masks folded in"
    )


def test_unstructured_sparsity(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    model = load_torch_model(recipe)
    from mmedge.recipe import SparsityConfig

    apply_sparsity(model, SparsityConfig(mode="unstructured", ratio=0.75))
    remove_masks(model)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    zero = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert 0.74 <= zero <= 0.76


def _prune_cli(tmp_path: Path, changes: dict[str, Any], *args: str) -> Any:
    recipe = write_recipe(
        tmp_path, {"prune": {"round_to": 2, "recover": {"mode": "none"}}, **changes}
    )
    return runner.invoke(app, ["prune", str(recipe), "-o", str(tmp_path / "pruned"), *args])


def test_prune_then_export_quantize_and_compare(tmp_path: Path) -> None:
    result = _prune_cli(
        tmp_path,
        {"prune.recover": {"mode": "distill", "epochs": 2}},
        "--branch",
        "image=0.5",
        "--ratio",
        "0.25",
        "--sparsity",
        "2:4",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "pruned"
    assert {"pruned.safetensors", "pruned-shapes.json", "recipe.yaml", "report.json"} <= {
        p.name for p in out.iterdir()
    }
    report = json.loads((out / "report.json").read_text())
    assert report["structured"]["ratios"] == {
        "image": 0.5,
        "text": 0.25,
        "audio": 0.25,
        "fusion": 0.25,
    }
    before, after = report["before"]["stats"], report["after"]["stats"]
    assert (
        after["image"]["params"] < before["image"]["params"]
        and after["total"]["macs"] < before["total"]["macs"]
    )
    for when in ("before", "after"):  # module names survive pruning: time stays attributed
        assert set(report[when]["onnxruntime_fp32"]["branch_ms"]) >= {
            "image",
            "text",
            "audio",
            "fusion",
        }
    assert report["recovery"]["steps"] == 4 and "2:4" in report["sparsity"]["note"]
    derived = yaml.safe_load((out / "recipe.yaml").read_text())
    assert derived["model"]["factory"] == "tests.models:tiny_fusion" and "prune" not in derived
    assert (derived["model"]["weights"], derived["model"]["shapes"]) == (
        "pruned.safetensors",
        "pruned-shapes.json",
    )
    assert derived["targets"]["tensorrt"]["sparse_weights"] is True

    for target, precision in (("onnxruntime", "int8"), ("openvino", "fp32"), ("tensorrt", "int8")):
        if target == "openvino":
            pytest.importorskip("openvino")
        artifact = tmp_path / f"{target}-{precision}"
        built = runner.invoke(
            app,
            [
                "export",
                str(out / "recipe.yaml"),
                "--target",
                target,
                "--precision",
                precision,
                "-o",
                str(artifact),
            ],
        )
        assert built.exit_code == 0, (target, built.stderr)
        manifest = json.loads((artifact / "manifest.json").read_text())
        # The audit: the pruned model went through the dynamo exporter while the original went
        # through TorchScript (fusions lost, 1.2-1.3x slower). Now it is the same class and path.
        assert manifest["steps"]["export"]["exporter"] == "torchscript"
        if target != "tensorrt":
            compared = runner.invoke(app, ["compare", str(artifact), "--json"])
            assert compared.exit_code == 0, compared.stderr  # against the pruned PyTorch model
    assert "--sparsity=enable" in (tmp_path / "tensorrt-int8" / "build_engine.sh").read_text()
    refused = runner.invoke(app, ["bench", str(out)])
    assert refused.exit_code == 10 and "export it first" in refused.stderr


def test_finetune_on_labels_with_feature_loss_and_global_ranking(tmp_path: Path) -> None:
    recover = {"mode": "finetune", "epochs": 2, "feature_weight": 1.0, "data": "eval"}
    result = _prune_cli(
        tmp_path,
        {"prune.recover": recover, "prune.global_pruning": True},
        "--branch",
        "audio=0.5",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    recovery = report["recovery"]
    assert recovery["mode"] == "finetune" and recovery["samples"] == 24
    # 2 epochs x 2 batches: the eval set's two shards differ in shape, and no batch spans two.
    assert np.isfinite(recovery["final_loss"]) and recovery["steps"] == 4
    # Only branches whose output kept its width take the feature loss: not the pruned audio
    # branch; the fusion head's output (the logits) always keeps its width.
    assert recovery["feature_loss_branches"] == ["fusion", "image", "text"]
    after = report["after"]["stats"]
    assert after["audio"]["params"] < report["before"]["stats"]["audio"]["params"]
    assert after["image"]["params"] == report["before"]["stats"]["image"]["params"]


@pytest.mark.parametrize(
    ("changes", "args", "code", "fragment"),
    [
        ({}, ["--ratio", "1.0"], 3, "prune.ratio: Input should be less than 1"),
        ({}, ["--ratio", "-0.1"], 3, "prune.ratio: Input should be greater than or equal to 0"),
        (
            {},
            ["--branch", "vision=0.5"],
            3,
            "prune.branches names ['vision'], which are not declared branches",
        ),
        ({}, ["--branch", "image"], 3, "--branch takes NAME=RATIO"),
        ({}, [], 3, "nothing to prune"),
        (
            {"prune.round_to": 8},
            ["--ratio", "0.5", "--strict"],
            3,
            "would remove every output channel of image_encoder.features.0 (4 channels",
        ),
        (
            {"model.factory": "tests.models:direct_parameter"},
            ["--branch", "text=0.5", "--strict"],
            6,
            "text_encoder.positions.weight: parameter used outside its module's forward",
        ),
        (
            {"model.factory": "tests.models:fixed_width"},
            ["--branch", "image=0.5", "--strict"],
            6,
            "with it pruned, the model fails in image_encoder.proj",
        ),
        (
            {"calibration": None, "eval": None},
            ["--ratio", "0.5", "--recover", "distill"],
            4,
            "there is no data to recover on",
        ),
        ({}, ["--ratio", "0.5", "--recover", "finetune"], 4, "'finetune' needs labelled data"),
        (
            {"prune.protect": ["image_encoder.nope"]},
            ["--ratio", "0.5"],
            3,
            "prune.protect names modules the model does not have: ['image_encoder.nope']",
        ),
    ],
)
def test_bad_input(
    tmp_path: Path, changes: dict[str, Any], args: list[str], code: int, fragment: str
) -> None:
    result = _prune_cli(tmp_path, changes, *args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert fragment in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "pruned").exists()


@pytest.mark.parametrize(
    ("factory", "branch", "left_whole"),
    [
        ("tests.models:direct_parameter", "text", {"text_encoder.positions.weight"}),
        # The pruned model failed in image_encoder.proj: the layers feeding it are left whole.
        ("tests.models:fixed_width", "image", {"image_encoder.conv"}),
    ],
)
def test_what_cannot_be_pruned_is_left_whole_and_reported(
    tmp_path: Path, factory: str, branch: str, left_whole: set[str]
) -> None:
    result = _prune_cli(
        tmp_path, {"model.factory": factory}, "--branch", f"{branch}=0.5", "--ratio", "0.5"
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert set(report["structured"]["left_whole"]) == left_whole
    assert "left whole:" in result.stdout
    before, after = report["before"]["stats"], report["after"]["stats"]
    assert after["audio"]["params"] < before["audio"]["params"], "the rest is pruned"


def test_a_pruned_model_with_a_recipe_whose_inputs_differ(tmp_path: Path) -> None:
    assert _prune_cli(tmp_path, {}, "--ratio", "0.5").exit_code == 0
    derived = yaml.safe_load((tmp_path / "pruned" / "recipe.yaml").read_text())
    derived["inputs"]["image"]["shape"] = ["batch", 3, 8, 8]
    derived.pop("calibration"), derived.pop("eval")  # their data would be refused first
    other = tmp_path / "pruned" / "other.yaml"
    other.write_text(yaml.safe_dump(derived))
    result = runner.invoke(app, ["export", str(other), "-o", str(tmp_path / "x")])
    # The pruned model is the factory's class again: the export names the layer that refuses.
    assert result.exit_code == 6, result.stderr
    assert "expected input[2, 3, 8, 8] to have 1 channels" in result.stderr


@pytest.mark.slow
def test_recovery_restores_accuracy_on_the_reference_model(tmp_path: Path) -> None:
    from mmedge.prune.artifact import prune_artifact

    recipe = load_recipe(
        REFERENCE, {"prune.recover.epochs": 3, "prune.recover.data.kwargs.samples": 1024}
    )
    report = prune_artifact(recipe, tmp_path / "pruned")["steps"]["prune"]
    pruned, recovered = report["after_pruning_accuracy"], report["after"]["accuracy"]
    assert pruned < 50.0 < 85.0 < recovered, (pruned, recovered)
    assert report["before"]["accuracy"] == pytest.approx(93.89, abs=0.01)
    assert np.isfinite(report["recovery"]["final_loss"])


def test_recovery_freezes_untouched_branches_and_undoes_a_collapse(tmp_path: Path) -> None:
    """Pretrained branches pruning left whole do not train; a recovery that destroys the model
    (here: a learning rate far too high, as a pretrained encoder at 3e-3 was in the audit) is
    caught by its own checks and undone, and the report says so."""
    from mmedge.data.datasets import open_calibration
    from mmedge.prune.recover import recover
    from mmedge.recipe import RecoverConfig

    recipe = load_recipe(write_recipe(tmp_path))
    teacher = load_torch_model(recipe)
    student = _pruned(tmp_path, branches={"image": 0.5})
    text_before = {k: v.clone() for k, v in student.text_encoder.state_dict().items()}
    data = open_calibration(recipe)

    gentle = recover(student, teacher, data, recipe, RecoverConfig(epochs=2, lr=1e-3))
    assert {"text", "audio"} <= set(gentle["frozen_branches"])
    assert "image" not in gentle["frozen_branches"]
    for key, value in student.text_encoder.state_dict().items():
        assert torch.equal(value, text_before[key]), key
    assert gentle["applied"] and gentle["kl_after"] < gentle["kl_before"]

    saved = {k: v.clone() for k, v in student.state_dict().items()}
    wild = recover(student, teacher, data, recipe, RecoverConfig(epochs=3, lr=50.0))
    assert not wild["applied"] and wild["rejected"]
    for key, value in student.state_dict().items():  # undone: the model before it, exactly
        assert torch.equal(value, saved[key]), key


def test_a_model_that_cannot_be_pruned_fails_before_any_measurement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A structural failure costs seconds: nothing is exported or timed before pruning ran."""
    import mmedge.prune.artifact

    def no_measuring(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("measured before pruning was known to work")

    monkeypatch.setattr(mmedge.prune.artifact, "_measure", no_measuring)
    result = _prune_cli(
        tmp_path,
        {"model.factory": "tests.models:fixed_width"},
        "--branch",
        "image=0.5",
        "--strict",
    )
    assert result.exit_code == 6, result.stderr
    assert "with it pruned, the model fails in image_encoder.proj" in result.stderr


def test_a_channel_last_flatten_leaks_into_no_other_branch(tmp_path: Path) -> None:
    """The audit: with text at ratio 0, the text branch still lost channels through an audio
    CNN's channel-last flatten into the fusion concat. Now that layer is left whole, said why."""
    recipe = load_recipe(
        write_recipe(tmp_path, {"model.factory": "tests.models:channel_last_audio"})
    )
    model = load_torch_model(recipe)
    shapes = {k: v.shape for k, v in model.state_dict().items() if k.startswith("text_encoder")}
    result = structured_prune(
        model, FEEDS, recipe, PruneConfig(round_to=2, branches={"audio": 0.5})
    )
    pruned = result.model
    assert {k: v.shape for k, v in pruned.state_dict().items() if k in shapes} == shapes
    assert "channel-last" in result.left_whole["audio_encoder.conv"]
    assert pruned(**FEEDS).shape == model(**FEEDS).shape


def test_a_pruned_model_pruned_again_still_loads(tmp_path: Path) -> None:
    """The shapes file describes the change from what the factory builds, across prunes."""
    assert _prune_cli(tmp_path, {}, "--ratio", "0.25").exit_code == 0
    first = load_recipe(tmp_path / "pruned" / "recipe.yaml")
    again = runner.invoke(
        app,
        ["prune", str(tmp_path / "pruned" / "recipe.yaml"), "--ratio", "0.25",
         "--recover", "none", "-o", str(tmp_path / "again")],
    )  # fmt: skip
    assert again.exit_code == 0, again.stderr
    twice = load_torch_model(load_recipe(tmp_path / "again" / "recipe.yaml"))
    once = load_torch_model(first)
    assert sum(p.numel() for p in twice.parameters()) < sum(p.numel() for p in once.parameters())
    assert twice(**FEEDS).shape == (2, 5)


def test_a_shapes_file_that_names_no_width_is_refused(tmp_path: Path) -> None:
    assert _prune_cli(tmp_path, {}, "--ratio", "0.25").exit_code == 0
    shapes = tmp_path / "pruned" / "pruned-shapes.json"
    saved = json.loads(shapes.read_text())
    saved["modules"]["head.classifier"] = {"forward": 3}
    shapes.write_text(json.dumps(saved))
    result = runner.invoke(app, ["inspect", str(tmp_path / "pruned" / "recipe.yaml")])
    assert result.exit_code == 8, result.stderr
    assert "head.classifier.forward = 3 is not a width of that module" in result.stderr
    assert "Traceback" not in result.stderr


def _cuda_recipe(tmp_path: Path) -> Path:
    prune = {"ratio": 0.5, "round_to": 2, "recover": {"device": "cuda", "epochs": 2}}
    return write_recipe(tmp_path, {"prune": prune})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_distillation_on_cuda_without_a_gpu_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", str(_cuda_recipe(tmp_path)), "-o", str(out)])
    assert result.exit_code == 11, result.output
    assert "prune.recover.device is 'cuda'" in result.output and not out.exists()


@pytest.mark.gpu
def test_distillation_trains_on_cuda(tmp_path: Path) -> None:
    """The student and teacher train on the GPU and come back to the CPU to be saved."""
    out = tmp_path / "pruned"
    result = runner.invoke(app, ["prune", str(_cuda_recipe(tmp_path)), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    recover = json.loads((out / "manifest.json").read_text())["steps"]["prune"]["recover"]
    assert recover["steps"] > 0 and recover["first_loss"] is not None
