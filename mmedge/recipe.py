"""The one typed recipe: a pydantic schema, YAML loading and CLI overrides.

Unknown keys are errors (``extra="forbid"``) and every error names its field path: a typo in a
recipe must never become a silent default. CLI flags are applied to the raw mapping *before*
validation, so they go through exactly the same checks as the YAML.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from mmedge.config import PosInt, StrictConfig
from mmedge.errors import RecipeError
from mmedge.hashing import sha256_json
from mmedge.preprocess.spec import PrepSpec
from mmedge.sweep.spec import SweepConfig

Dtype = Literal["float32", "float16", "int64", "int32", "bool", "uint8"]
Modality = Literal["image", "text", "audio", "tabular", "other"]
C = TypeVar("C", bound=BaseModel)
MAX_THREADS = 1024  # the largest CPU servers have a few hundred logical CPUs
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class InputSpec(StrictConfig):
    """One named model input: shape entries are ints (static) or axis names (dynamic)."""

    shape: list[int | str] = Field(min_length=1)
    dtype: Dtype = "float32"
    modality: Modality
    # Value range [low, high) of dummy inputs (e.g. token ids below vocab size); for integer
    # inputs, data at or above `high` is refused (an id beyond the embedding).
    range: tuple[float, float] | None = None

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int | str]) -> list[int | str]:
        for dim in shape:
            if isinstance(dim, int) and dim < 1:
                raise ValueError(f"static dimension must be >= 1, got {dim}")
            if isinstance(dim, str) and not _IDENT.match(dim):
                raise ValueError(f"axis name must be an identifier, got {dim!r}")
        return shape

    @field_validator("range")
    @classmethod
    def _range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not (math.isfinite(value[0]) and math.isfinite(value[1])):
            raise ValueError(f"range must be finite, got {list(value)}")
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"range is [low, high) with low < high, got {list(value)}")
        return value


class AxisRange(StrictConfig):
    """A named dynamic axis shared by every input that uses it."""

    min: PosInt
    opt: PosInt
    max: PosInt

    @model_validator(mode="after")
    def _ordered(self) -> AxisRange:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"need min <= opt <= max, got {self.min}, {self.opt}, {self.max}")
        return self


class ModelSource(StrictConfig):
    """Where the model comes from: a factory (+ weights), a torch.export .pt2, or an .onnx."""

    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None
    path: Path | None = None
    # Folders searched first for the factory's module (relative to the recipe). Default: the
    # recipe's own folder when the module's file lies there (a model.py beside recipe.yaml).
    import_path: list[Path] = Field(default_factory=list)
    # Layer widths that differ from what the factory builds (written by `mmedge prune`): applied
    # before the weights load, so a pruned model keeps its class and exports like the original.
    shapes: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        if (self.factory is None) == (self.path is None):
            raise ValueError("give exactly one of 'factory' (package.module:function) or 'path'")
        if self.factory is not None and not _FACTORY.match(self.factory):
            raise ValueError(
                f"factory must look like 'package.module:function', got {self.factory!r}"
            )
        if self.weights is not None:
            if self.factory is None:
                raise ValueError("'weights' goes with 'factory', not with 'path'")
            if self.weights.suffix not in {".safetensors", ".pt", ".pth"}:
                raise ValueError(
                    f"weights must be .safetensors, .pt or .pth, got {self.weights.name!r}"
                )
        if self.shapes is not None and self.weights is None:
            raise ValueError("'shapes' goes with 'factory' and 'weights'")
        if self.path is not None and self.path.suffix not in {".pt2", ".onnx"}:
            raise ValueError(
                f"path must be a torch.export .pt2 or an .onnx, got {self.path.name!r}"
            )
        return self


class SyntheticData(StrictConfig):
    """Seeded random inputs cycling the min/opt/max shapes: for models without data (latency)."""

    samples: PosInt = 32
    seed: int = 0


class CalibrationSource(StrictConfig):
    """A directory of .npz shards of named inputs (see calibration/README.md), or synthetic."""

    path: Path | None = None
    synthetic: SyntheticData | None = None
    samples: PosInt | None = None  # cap; None uses every sample
    batch: PosInt = 8

    @model_validator(mode="after")
    def _one_source(self) -> CalibrationSource:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError(
                "give exactly one of 'path' (a directory of .npz shards) or 'synthetic'"
            )
        return self


class EvalSource(StrictConfig):
    """A held-out split in the same shard format, plus which output holds class scores.

    ``label_key: null``: no labels; accuracy is not measured, agreement with FP32 still is (a
    gate on ``max_accuracy_drop`` then has nothing to check and says so)."""

    path: Path
    samples: PosInt | None = None
    batch: PosInt = 16
    label_key: str | None = "label"
    output: str | None = None  # defaults to the first output


class ExportConfig(StrictConfig):
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    fallback: bool = True  # try the other exporter when the chosen one fails
    opset: Annotated[int, Field(ge=13, le=23)] = 18
    atol: Annotated[float, Field(gt=0)] = 1e-4
    rtol: Annotated[float, Field(ge=0)] = 1e-3


# Op types ONNX Runtime's QDQ quantizer can handle that a recipe may name.
QuantOp = Literal[
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Gather",
    "Add",
    "Mul",
    "Softmax",
    "LayerNormalization",
    "Concat",
    "Relu",
    "Clip",
    "Sigmoid",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "Resize",
    "Transpose",
    "Reshape",
    "Split",
    "Squeeze",
    "Unsqueeze",
    "InstanceNormalization",
    "Where",
    "Pad",
]

_WEIGHTED_OPS: tuple[QuantOp, ...] = ("Conv", "MatMul", "Gemm", "Gather")


class AccuracyConfig(StrictConfig):
    """The gate `mmedge quantize --auto` (and `run`) searches a mixed-precision policy for.

    Measured against the FP32 ONNX export (checked against PyTorch at export) on the eval set,
    or the calibration set when the recipe has none.
    """

    # top1_agreement and cosine are fractions (>= target), sqnr_db in dB (>= target),
    # accuracy_drop in percentage points against FP32 (<= target; needs labels).
    metric: Literal["top1_agreement", "accuracy_drop", "cosine", "sqnr_db"] = "top1_agreement"
    target: float = 0.99
    samples: PosInt | None = None  # validation samples (cap); None: the whole set
    # Layers are ranked by how much of the output error they cause, on this many samples.
    ranking_samples: PosInt = 128
    max_float_layers: PosInt = 32  # give up (and say so) past this many layers in float
    # Time each candidate policy for this long per round (latency decides between passing ones).
    latency_seconds: Annotated[float, Field(gt=0)] = 0.3

    @model_validator(mode="after")
    def _target_in_range(self) -> AccuracyConfig:
        limits = {"top1_agreement": (0, 1), "cosine": (-1, 1), "accuracy_drop": (0, 100)}
        low, high = limits.get(self.metric, (float("-inf"), float("inf")))
        if not low <= self.target <= high:
            raise ValueError(
                f"target {self.target} is outside [{low}, {high}] for metric {self.metric}"
            )
        return self


class QuantizationConfig(StrictConfig):
    mode: Literal["static", "dynamic"] = "static"
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: Annotated[float, Field(gt=90, le=100)] = 99.999
    per_channel: bool = True
    # The CPU the INT8 artifact will run on: "auto" (this machine) or a profile (x86-avx2,
    # x86-avx512, x86-vnni, x86-amx, arm-neon, arm-dotprod, arm-i8mm). It picks the types below
    # when they are left unset (mmedge/quantize/isa.py says why); the manifest records both.
    isa: str = "auto"
    activation_type: Literal["uint8", "int8"] | None = None
    weight_type: Literal["int8", "uint8"] | None = None
    # Without VNNI, u8 x s8 products can saturate 16-bit accumulators; 7-bit weights avoid it.
    reduce_range: bool | None = None
    # Weighted ops only, by default. Measured on the reference model: ONNX Runtime's own default
    # (every op it can quantize) also quantizes the attention-mask Add, whose range reaches -1e4,
    # and LayerNorm: top-1 agreement 93.5% and a 3.7-point accuracy drop, all from the text
    # branch. Conv/MatMul/Gemm/Gather: 99.8% agreement, no drop (benchmarks/results/).
    # Gather quantizes embedding tables, the largest weights of text branches.
    op_types: list[QuantOp] = Field(default_factory=lambda: list(_WEIGHTED_OPS), min_length=1)
    keep_fp32: list[str] = Field(default_factory=list)  # branch names left in floating point
    # ONNX Runtime fuses Q/DQ chains into integer kernels, so by default it also quantizes
    # biases (INT32) and the outputs of Conv/MatMul/Gemm. TensorRT bundles turn both off: its
    # DequantizeLinear takes no INT32, and Q/DQ after a weighted op blocks the fusion of the
    # bias, activation or residual that follows.
    quantize_bias: bool = True
    quantize_weighted_outputs: bool = True
    exclude_nodes: list[str] = Field(default_factory=list)  # raw ONNX node names, advanced
    accuracy: AccuracyConfig | None = None  # the gate of `quantize --auto`; see AccuracyConfig

    @field_validator("isa")
    @classmethod
    def _known_isa(cls, value: str) -> str:
        from mmedge.hardware import PROFILES

        if value != "auto" and value not in PROFILES:
            raise ValueError(
                f"unknown ISA profile {value!r}; expected one of: auto, {', '.join(PROFILES)}"
            )
        return value


class TargetsConfig(RootModel[dict[str, Any]]):
    """``targets.<name>``: each registered target's own section, validated by the config model
    its module declares (mmedge/targets); every registered target gets its defaults."""

    root: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _by_registry(cls, data: Any) -> dict[str, Any]:
        from mmedge.targets import specs

        if isinstance(data, TargetsConfig):
            data = data.root
        if data is None or data is PydanticUndefined:  # absent: every target's defaults
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of target name to settings, got {data!r}")
        registered = specs()
        unknown = sorted(set(data) - set(registered))
        if unknown:
            raise ValueError(
                f"unknown target {unknown[0]!r}; registered targets: {', '.join(registered)}"
            )
        found: dict[str, Any] = {}
        problems: list[str] = []
        for name, spec in registered.items():
            value = data.get(name)
            if isinstance(value, spec.config):
                found[name] = value
                continue
            try:
                found[name] = spec.config.model_validate(value or {})
            except ValidationError as err:
                problems += [
                    f"{name}.{line.strip()}" for line in format_validation_error(err).splitlines()
                ]
        if problems:
            raise ValueError("; ".join(problems))
        return found

    def of(self, name: str, kind: type[C]) -> C:
        """Target ``name``'s section, typed as the config model its module declares."""
        value = self.root[name]
        if not isinstance(value, kind):
            raise TypeError(f"targets.{name} is a {type(value).__name__}, not {kind.__name__}")
        return value


Ratio = Annotated[float, Field(ge=0, lt=1)]


class SparsityConfig(StrictConfig):
    """Zeros inside dense tensors: 2:4 is what sparse tensor cores (TensorRT) can use;
    unstructured sparsity shrinks nothing and speeds nothing up on dense kernels."""

    mode: Literal["none", "unstructured", "2:4"] = "none"
    ratio: Ratio = 0.5  # unstructured only; 2:4 is always half


class DataFactory(StrictConfig):
    """A data source made by Python code: ``package.module:function`` called with ``kwargs``,
    returning an mmedge data source (``mmedge.data.datasets.DataSource``)."""

    factory: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("factory")
    @classmethod
    def _shape(cls, value: str) -> str:
        if not _FACTORY.match(value):
            raise ValueError(f"factory must look like 'package.module:function', got {value!r}")
        return value


class RecoverConfig(StrictConfig):
    """Accuracy recovery after pruning: distillation from the unpruned model (no labels needed)
    or fine-tuning on labels."""

    mode: Literal["distill", "finetune", "none"] = "distill"
    epochs: PosInt = 12
    # Peak, decaying along a cosine. The default suits pretrained weights (seen: 3e-3 over a
    # pretrained MiniLM collapsed a model to one class); a small model trained from scratch,
    # as the reference, recovers faster at 3e-3 and says so in its recipe.
    lr: Annotated[float, Field(gt=0)] = 1e-4
    batch: PosInt = 32
    temperature: Annotated[float, Field(gt=0)] = 2.0
    # Weight of a per-branch MSE between student and teacher branch embeddings (branches whose
    # output width pruning left unchanged): it keeps each branch's embedding where the fusion
    # head expects it. 0 turns it off.
    feature_weight: Annotated[float, Field(ge=0)] = 1.0
    # Shards or a data factory to train on; None: the calibration set (distill). Finetuning
    # needs labels.
    data: Path | DataFactory | None = None
    label_key: str = "label"
    # Branches pruning left exactly as they were (pretrained encoders kept whole) do not train:
    # distilling through them can only damage what was not broken (seen: a pretrained text
    # encoder trained at 3e-3 collapsed a model to one class).
    freeze_untouched: bool = True
    # Where distillation trains: cuda is another numeric path (its own cache key), never a
    # silent fallback; `mmedge sweep` asks its Ray cluster for a GPU for such a prune.
    device: Literal["cpu", "cuda"] = "cpu"


class PruneConfig(StrictConfig):
    ratio: Ratio = 0.0  # every branch not listed in `branches`
    branches: dict[str, Ratio] = Field(default_factory=dict)
    global_pruning: bool = False  # rank channels across layers instead of layer by layer
    round_to: PosInt = 8  # kept channels a multiple of this (SIMD- and tensor-core-friendly)
    importance: Literal["magnitude", "taylor"] = "magnitude"  # taylor uses calibration data
    prune_heads: bool = True  # whole attention heads (head width kept)
    protect: list[str] = Field(default_factory=list)  # module names whose outputs stay whole
    # Layers mmedge cannot prune safely are left whole and reported; strict makes that an error.
    strict: bool = False
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    recover: RecoverConfig = Field(default_factory=RecoverConfig)


def _default_variants() -> list[str]:
    from mmedge.targets import default_variants

    return default_variants()


class RunConfig(StrictConfig):
    """What `mmedge run` builds: TARGET-PRECISION variants, compared and benchmarked."""

    # Default: what each registered target lists as its default variants.
    variants: list[str] = Field(default_factory=_default_variants, min_length=1)
    # With a prune section: also build the unpruned model (ONNX Runtime FP32) as the baseline
    # the report's speed-ups are measured against.
    baseline: bool = True
    compare_samples: PosInt | None = None  # cap on eval samples for compare and parity
    # Speed-ups come from rounds that time every variant in turn (median of per-round ratios).
    latency_rounds: PosInt = 5
    latency_seconds: Annotated[float, Field(gt=0)] = 0.5  # per variant and round

    @field_validator("variants")
    @classmethod
    def _variants(cls, values: list[str]) -> list[str]:
        from mmedge.targets import specs

        registered = specs()
        for value in values:
            target, _, precision = value.partition("-")
            if target not in registered:
                raise ValueError(
                    f"variant {value!r}: unknown target {target!r}; expected TARGET-PRECISION "
                    f"with TARGET one of {', '.join(registered)}"
                )
            if precision not in registered[target].precisions:
                raise ValueError(
                    f"variant {value!r}: {target} has no precision {precision!r}; "
                    f"expected one of {', '.join(registered[target].precisions)}"
                )
        if len(set(values)) != len(values):
            raise ValueError("variants are listed twice")
        return values


class CompareGate(StrictConfig):
    """Thresholds; a None threshold is not checked."""

    min_cosine: Annotated[float, Field(ge=-1, le=1)] | None = 0.99
    max_accuracy_drop: Annotated[float, Field(ge=0)] | None = 1.0  # percentage points
    min_top1_agreement: Annotated[float, Field(ge=0, le=1)] | None = 0.98


class BenchConfig(StrictConfig):
    warmup: Annotated[int, Field(ge=0)] = 20
    iterations: PosInt = 200
    duration_s: Annotated[float, Field(gt=0)] | None = None  # when set, replaces iterations
    batch: PosInt = 1
    # Capped: a runtime asked for 100000 threads makes them (16 GB of stacks, seen); past the
    # CPUs they only contend, and `bench` warns.
    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] = 2
    # Which point of the dynamic axes' (min, opt, max) the inputs take; the batch axis is 'batch'.
    shape: Literal["min", "opt", "max"] = "opt"
    # latency: one request at a time (sync). throughput: several requests in flight (async),
    # for targets that have an asynchronous API (OpenVINO).
    mode: Literal["latency", "throughput"] = "latency"
    profile: bool = False  # also time each layer and report the time per branch


class Recipe(StrictConfig):
    name: str = Field(min_length=1)
    description: str = ""
    model: ModelSource
    inputs: dict[str, InputSpec] = Field(min_length=1)
    axes: dict[str, AxisRange] = Field(default_factory=dict)
    outputs: list[str] = Field(min_length=1)
    branches: dict[str, list[str]] = Field(default_factory=dict)
    calibration: CalibrationSource | None = None
    eval: EvalSource | None = None
    export: ExportConfig = Field(default_factory=ExportConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    targets: TargetsConfig = Field(default_factory=TargetsConfig)
    compare: CompareGate = Field(default_factory=CompareGate)
    bench: BenchConfig = Field(default_factory=BenchConfig)
    prune: PruneConfig | None = None
    run: RunConfig = Field(default_factory=RunConfig)
    # `mmedge sweep`: the recipe fields to vary and how to search them (mmedge/sweep/spec.py).
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    # Raw field name (a folder per field, or a manifest column) -> how it becomes inputs.
    preprocess: dict[str, PrepSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        _check_axes(self)
        _check_memory(self)
        _check_branches(self)
        _check_batches(self)
        if self.prune is not None:
            unknown = sorted(set(self.prune.branches) - set(self.branches))
            if unknown:
                raise ValueError(
                    f"prune.branches names {unknown}, which are not declared branches "
                    f"(declared: {sorted(self.branches)})"
                )
        if self.eval is not None and self.eval.output not in (None, *self.outputs):
            raise ValueError(
                f"eval.output {self.eval.output!r} is not one of outputs {self.outputs}"
            )
        return self

    @property
    def batch_axis(self) -> str:
        """The axis every input shares as its first dimension."""
        first = next(iter(self.inputs.values())).shape[0]
        return str(first)

    def artifact_sha256(self, target: str | None = None, precision: str | None = None) -> str:
        """Hash of the fields that shape an artifact: what makes two artifacts 'the same'.

        Compare gates, bench settings, eval data and names are left out: changing them does
        not change what export or quantize would write. Of ``targets``, only ``target``'s own
        section counts (none without one): registering another target changes no artifact.
        A float ``precision`` leaves out quantization and calibration too, so a sweep over
        quantization settings builds its FP32 variant once.
        """
        left_out = {"targets"}
        if precision is not None and precision != "int8":
            left_out |= {"quantization", "calibration"}
        fields = self.model_dump(mode="json", include=_ARTIFACT_FIELDS - left_out)
        if target is not None:
            fields["targets"] = {target: self.targets.root[target].model_dump(mode="json")}
        return sha256_json(fields)


_ARTIFACT_FIELDS = {
    "model",
    "inputs",
    "axes",
    "outputs",
    "branches",
    "calibration",
    "export",
    "quantization",
    "targets",
}


def _check_axes(recipe: Recipe) -> None:
    used: set[str] = set()
    firsts: set[str | int] = set()
    for name, spec in recipe.inputs.items():
        firsts.add(spec.shape[0])
        for dim in spec.shape:
            if isinstance(dim, str):
                if dim not in recipe.axes:
                    raise ValueError(
                        f"inputs.{name}.shape uses axis {dim!r}, which is not declared in 'axes' "
                        f"(declared: {sorted(recipe.axes)})"
                    )
                used.add(dim)
    unused = sorted(set(recipe.axes) - used)
    if unused:
        raise ValueError(f"axes {unused} are declared but no input uses them")
    if len(firsts) != 1 or not isinstance(next(iter(firsts)), str):
        raise ValueError(
            "every input's first dimension must be the same named batch axis "
            f"(e.g. 'batch'), got {sorted(map(str, firsts))}"
        )


def memory_budget() -> int:
    """Bytes one batch of inputs at the axes' max may take (``MMEDGE_MEMORY_BUDGET_GB``, default
    4): a fixed default, not this machine's memory, so a recipe validates the same anywhere."""
    raw = os.environ.get("MMEDGE_MEMORY_BUDGET_GB", "4")
    try:
        gb = float(raw)
    except ValueError:
        gb = 4.0
    return int(gb * 2**30) if math.isfinite(gb) and gb > 0 else 4 * 2**30


def _check_memory(recipe: Recipe) -> None:
    # Checked before anything allocates: an axis max of 10^9 would otherwise end in an
    # allocation failure deep inside a step (or in the OOM killer).
    sizes = {"int64": 8, "float32": 4, "int32": 4, "float16": 2, "bool": 1, "uint8": 1}
    total, parts = 0, []
    for name, spec in recipe.inputs.items():
        count = 1
        for dim in spec.shape:
            count *= dim if isinstance(dim, int) else recipe.axes[dim].max
        nbytes = count * sizes.get(spec.dtype, 8)
        total += nbytes
        parts.append(f"{name} {_gib(nbytes)} GiB")
    if total > memory_budget():
        raise ValueError(
            f"one batch of inputs at the axes' max takes {_gib(total)} GiB "
            f"({', '.join(parts)}), above the memory budget of "
            f"{memory_budget() / 2**30:.3g} GiB: lower the axes' max (or raise "
            "MMEDGE_MEMORY_BUDGET_GB)"
        )


def _gib(nbytes: int) -> str:
    # Dims and axes have no upper bound: their product can be too large for a float.
    return f"{nbytes / 2**30:.3g}" if nbytes < 2**1000 else f"about 2^{nbytes.bit_length() - 30}"


def _check_batches(recipe: Recipe) -> None:
    # A batch above the batch axis's max is outside what the artifact was built for (a
    # TensorRT profile, an exported program's guards), even where a backend would accept it.
    limit = recipe.axes[recipe.batch_axis].max
    for section in ("calibration", "eval", "bench"):
        block = getattr(recipe, section)
        if block is not None and block.batch > limit:
            raise ValueError(
                f"{section}.batch is {block.batch}, above the batch axis "
                f"'{recipe.batch_axis}' max of {limit}"
            )


def _check_branches(recipe: Recipe) -> None:
    seen: dict[str, str] = {}
    for branch, prefixes in recipe.branches.items():
        if not _IDENT.match(branch):
            raise ValueError(f"branch name must be an identifier, got {branch!r}")
        if not prefixes:
            raise ValueError(f"branches.{branch} needs at least one module-name prefix")
        for prefix in prefixes:
            if prefix in seen:
                raise ValueError(
                    f"module prefix {prefix!r} is in both {seen[prefix]!r} and {branch!r}"
                )
            seen[prefix] = branch
    unknown = [b for b in recipe.quantization.keep_fp32 if b not in recipe.branches]
    if unknown:
        raise ValueError(
            f"quantization.keep_fp32 names {unknown}, which are not declared branches "
            f"(declared: {sorted(recipe.branches)})"
        )


# Path-valued fields, resolved relative to the recipe file so recipes work from any CWD.
_PATH_FIELDS = (
    ("model", "weights"),
    ("model", "shapes"),
    ("model", "path"),
    ("calibration", "path"),
    ("eval", "path"),
)
_NESTED_PATH_FIELDS = ((("prune", "recover"), "data"),)


def _target_path_fields() -> list[tuple[tuple[str, ...], str]]:
    """Each target's own Path-valued fields (TensorRT's timing cache...)."""
    from mmedge.targets import specs

    return [
        (("targets", name), field)
        for name, spec in specs().items()
        for field, info in spec.config.model_fields.items()
        if info.annotation is not None and "Path" in str(info.annotation)
    ]


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    blocks: list[tuple[tuple[str, ...], str]] = [((s,), key) for s, key in _PATH_FIELDS]
    blocks += list(_NESTED_PATH_FIELDS)
    blocks += _target_path_fields()
    prep = raw.get("preprocess")
    if isinstance(prep, dict):  # tokenizer files, under field names the recipe chooses
        blocks += [(("preprocess", name), "tokenizer") for name in prep]
    for sections, key in blocks:
        block: Any = raw
        for section in sections:
            block = block.get(section) if isinstance(block, dict) else None
        if isinstance(block, dict) and isinstance(block.get(key), str):
            if "\x00" in block[key]:
                field = ".".join((*sections, key))
                raise RecipeError(f"{field}: {block[key]!r} holds a NUL byte, so it is no path")
            path = Path(block[key]).expanduser()
            block[key] = str(path if path.is_absolute() else (base / path).resolve())


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set dotted keys (``quantization.method``) in the raw mapping, creating sections."""
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[leaf] = value


def with_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """The recipe with dotted overrides applied, validated like any recipe."""
    raw = recipe.model_dump(mode="json")
    apply_overrides(raw, overrides)
    return parse_recipe(raw, f"recipe {recipe.name} with {sorted(overrides)}")


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(recipe)"
        msg = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {where}: {msg}{shown}")
    return "\n".join(lines)


def parse_recipe(raw: Any, source: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(f"{source} is invalid:\n{format_validation_error(err)}") from None


def load_recipe(path: Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, resolve paths, apply CLI overrides (paths already absolute), validate.

    An override whose value is None removes nothing and sets the field to null (e.g.
    ``calibration.synthetic`` when ``--calib`` names a directory instead).
    """
    raw = load_raw(path)
    if isinstance(raw, dict):
        apply_overrides(raw, overrides or {})
    return parse_recipe(raw, str(path))


def parse_relative(raw: dict[str, Any], base: Path, source: str) -> Recipe:
    """A recipe from data whose relative paths are relative to ``base``."""
    _resolve_paths(raw, base)
    return parse_recipe(raw, source)


def load_raw(path: Path) -> Any:
    """The recipe file as YAML data, its paths made absolute (not validated)."""
    from mmedge.yamlfile import YamlLimitError, load_yaml

    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        raw = load_yaml(path)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path} is not valid YAML:\n{err}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(
            f"{path} is not a text file (byte {err.start} is not UTF-8): a recipe is YAML text"
        ) from None
    except YamlLimitError as err:
        raise RecipeError(f"{path} {err}") from None
    if isinstance(raw, dict):
        _resolve_paths(raw, path.resolve().parent)
        _resolve_import_path(raw, path.resolve().parent)
    return raw


def _resolve_import_path(raw: dict[str, Any], base: Path) -> None:
    model = raw.get("model")
    if not isinstance(model, dict):
        return
    given = model.get("import_path")
    if isinstance(given, list):
        model["import_path"] = [
            str((base / Path(p).expanduser()).resolve()) if isinstance(p, str) else p for p in given
        ]
        return
    factory = model.get("factory")
    if given is None and isinstance(factory, str) and _FACTORY.match(factory):
        top = factory.split(":")[0].split(".")[0]
        if (base / f"{top}.py").is_file() or (base / top / "__init__.py").is_file():
            model["import_path"] = [str(base)]
