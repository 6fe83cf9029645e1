"""TensorRT's own commands on a bundle: its rule check, and ``mmedge build`` on the device."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmedge.errors import ArtifactError, RuleViolation
from mmedge.findings import Finding

if TYPE_CHECKING:
    from mmedge.recipe import Recipe


def check_bundle(artifact: Path, recipe: Recipe) -> list[Finding]:
    """TensorRT's parser and quantization rules on the bundle's ONNX (TargetSpec.rules)."""
    from mmedge.onnxio import read_onnx
    from mmedge.targets.tensorrt.rules import check_model

    model = read_onnx(artifact, ArtifactError, external_data=True)
    return check_model(model, recipe.branches, recipe.quantization.keep_fp32)


def build_engine_in_bundle(
    directory: Path, weak_fp16: bool, use_trtexec: bool, allow_violations: bool
) -> dict[str, Any]:
    """Build the bundle's engine on this machine and record it in the manifest."""
    from mmedge.artifacts import check_artifact, open_artifact
    from mmedge.rundir import write_manifest
    from mmedge.targets.tensorrt import bundle_files
    from mmedge.targets.tensorrt.engine import BuildOptions, build_engine

    if open_artifact(directory)[0]["target"] != "tensorrt":
        raise ArtifactError(
            f"{directory} is not a TensorRT bundle: `mmedge build` builds a bundle's engine "
            "(mmedge export --target tensorrt)"
        )
    findings = check_artifact(directory)
    errors = [f for f in findings if f.severity == "error"]
    if errors and not allow_violations:
        listed = "\n  ".join(f"{f.node} [{f.branch}] {f.rule}: {f.message}" for f in errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise RuleViolation(
            f"{len(errors)} TensorRT rule violation(s); the build is refused:\n  {listed}{more}",
            hint="fix the graph, or pass --allow-violations to let TensorRT try anyway",
        )
    manifest, recipe, _ = open_artifact(directory)
    meta = build_engine(directory, recipe, BuildOptions(weak_fp16, use_trtexec))
    updated = write_manifest(
        directory,
        bundle_files(directory),
        {
            k: v
            for k, v in manifest.items()
            if k not in ("format", "created", "artifact", "versions", "host")
        }
        | {"engine": meta},
    )
    return updated
