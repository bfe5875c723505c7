"""The one schema for an experiment spec.

Every section is a strict pydantic model (unknown keys are errors), so a typo never silently falls back
to a default. Reading a YAML file is specs/load.py's; turning pydantic's errors into one readable line
is specs/messages.py's.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    StrictBool,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from uverify.kinds import Aggregation, BoundMethod, GateMetric, Norm, UnlearningMethod, canonical_norm


class _Strict(BaseModel):
    """Unknown keys are errors; numbers and flags are strict (the types below)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Strict numbers and flags: YAML's `true` is not a count, "3" is not 3, 2.0 is not an integer (a batch
# size of 1 from `batch_size: true` makes a run that never ends). A float field takes an integer.
Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Gt(0)]
NonNegInt = Annotated[int, Strict(), Ge(0)]
Float = Annotated[float, Strict()]
PosFloat = Annotated[float, Strict(), Gt(0)]
NonNegFloat = Annotated[float, Strict(), Ge(0)]


# ---------------------------------------------------------------------------------------------- data
class _DataBase(_Strict):
    test_fraction: Float = Field(0.2, gt=0.0, lt=1.0, description="held-out share, stratified")
    seed: Int = Field(0, description="seed of generation and of the train/test split")
    samples: PosInt = Field(200, description="how many samples of `split` the verifier checks")
    split: Literal["train", "test"] = "test"


class MixtureData(_DataBase):
    """The seed's synthetic Gaussian mixture: no files needed."""

    dataset: Literal["mixture"]
    classes: Int = Field(3, ge=2)
    dims: PosInt = 10
    separation: PosFloat = Field(4.0, description="distance between class means, in noise stds")
    std: PosFloat = 1.0
    n_samples: Int = Field(3000, ge=10)


class DigitsData(_DataBase):
    """The 8x8 digits bundled in scikit-learn: the stand-in for SVHN on a machine with no data."""

    dataset: Literal["digits"]


class _FileData(_DataBase):
    """A data set the user brings: `path` names its file or folder (never downloaded)."""

    path: Path = Field(description="the data file, or the folder that holds it")
    subsample: PosInt | None = Field(None, description="keep this many labelled samples (seeded)")

    @field_validator("path", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


class LoanData(_FileData):
    """Lending Club: the full accepted_2007_to_2018Q4.csv (151 columns), or the 22-column `lending_club`
    table of the modeldata / Rdatasets collections (recognised by its header)."""

    dataset: Literal["loan"]
    path: Path = Field(description="the csv file, or a folder holding accepted_2007_to_2018Q4.csv")
    clip: PosFloat = Field(5.0, description="standardised numerics are clipped to [-clip, clip]")
    cache: StrictBool = Field(True, description="parse the csv once; later loads read a cache keyed by the file's hash")


class SvhnData(_FileData):
    """SVHN's cropped digits: train_32x32.mat and test_32x32.mat (their own split; test_fraction unused)."""

    dataset: Literal["svhn"]
    path: Path = Field(description="the folder holding train_32x32.mat and test_32x32.mat")


class Ham10000Data(_FileData):
    """HAM10000: HAM10000_metadata.csv and the ISIC_*.jpg images, split by lesion_id."""

    dataset: Literal["ham10000"]
    path: Path = Field(description="the folder holding HAM10000_metadata.csv and the image folder(s)")
    image_size: PosInt = Field(32, description="images are resized to image_size x image_size")


class TweetsData(_FileData):
    """Disaster Tweets: tweets.csv (id, keyword, location, text, target) as TF-IDF or bag-of-words vectors."""

    dataset: Literal["tweets"]
    path: Path = Field(description="tweets.csv, or the folder holding it")
    vocabulary: PosInt = Field(1000, description="the most frequent training words kept as features")
    features: Literal["tfidf", "bow"] = "tfidf"


class MiniImagenetData(_FileData):
    """Mini-ImageNet: a csv of filename,label over an image folder, or one folder per class."""

    dataset: Literal["mini_imagenet"]
    path: Path = Field(description="the folder holding the images (and the csv, if that is the layout)")
    image_size: PosInt = Field(32, description="images are resized to image_size x image_size")
    classes: PosInt | None = Field(None, description="keep the first N classes (sorted by name)")


DataSpec = Annotated[
    MixtureData | DigitsData | LoanData | SvhnData | Ham10000Data | TweetsData | MiniImagenetData,
    Field(discriminator="dataset"),
]


# --------------------------------------------------------------------------------------------- model
class MlpSpec(_Strict):
    arch: Literal["mlp"]
    hidden: list[PosInt] = Field(default_factory=lambda: [64, 64])


class CnnSpec(_Strict):
    """Conv+ReLU blocks, Flatten, Linear: only layers auto_LiRPA 0.3 can bound."""

    arch: Literal["cnn"]
    channels: list[PosInt] = Field(default_factory=lambda: [16, 32], min_length=1)
    kernel_size: PosInt = 3
    stride: PosInt = 1
    hidden: list[PosInt] = Field(default_factory=lambda: [64])


ModelSpec = Annotated[MlpSpec | CnnSpec, Field(discriminator="arch")]


# ------------------------------------------------------------------------------------------ training
class AdversarialSpec(_Strict):
    """Madry PGD training; the norm is the property's norm."""

    epsilon: PosFloat
    steps: PosInt = 10
    step_size: PosFloat | None = Field(
        None, description="step as a multiple of epsilon; default 2.5/steps (Madry et al.)"
    )


class TrainSpec(_Strict):
    epochs: PosInt = 20
    batch_size: PosInt = 128
    lr: PosFloat = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: Float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: NonNegFloat = 0.0
    seed: Int = Field(0, description="seed of initialisation, shuffling and attack starts")
    adversarial: AdversarialSpec | None = None


# ---------------------------------------------------------------------------------------- unlearning
class SisaSpec(_Strict):
    shards: PosInt = 5
    slices: PosInt = 4
    aggregation: Aggregation = Aggregation.MEAN_LOGITS


class AmnesiacSpec(_Strict):
    repair_epochs: NonNegInt = 1
    dtype: Literal["float32", "float16"] = "float32"


class DeleteSpec(_Strict):
    """A deletion request: a seeded fraction of the training set, or a file of sample ids."""

    fraction: Float | None = Field(None, gt=0.0, lt=1.0)
    ids: Path | None = None
    seed: Int = 0

    @model_validator(mode="after")
    def _one_source(self) -> DeleteSpec:
        if (self.fraction is None) == (self.ids is None):
            raise ValueError("give exactly one of 'fraction' and 'ids'")
        return self


class UnlearningSpec(_Strict):
    method: UnlearningMethod = UnlearningMethod.SISA
    sisa: SisaSpec = Field(default_factory=SisaSpec)
    amnesiac: AmnesiacSpec = Field(default_factory=AmnesiacSpec)
    delete: DeleteSpec = Field(default_factory=lambda: DeleteSpec(fraction=0.01))


# ------------------------------------------------------------------------------ property and checks
# `inf`, `.inf`, `2`, `"2"`, `l2`, ... are all accepted; the canonical form is the string 'inf', '2' or '1'
NormField = Annotated[Norm, BeforeValidator(canonical_norm)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class PropertySpec(_Strict):
    """forall x^: ||x - x^||_p < epsilon  =>  M(x^) = y, for every epsilon of the sweep."""

    norm: NormField = Norm.INF
    epsilon: Annotated[list[PosFloat], BeforeValidator(_as_list)] = Field(default_factory=lambda: [0.01], min_length=1)
    label: StrictBool = Field(True, description="true: y is the sample's label; false: M's clean prediction")

    @field_validator("epsilon")
    @classmethod
    def _finite_unique(cls, value: list[float]) -> list[float]:
        if any(not math.isfinite(e) for e in value):
            raise ValueError("every epsilon must be finite")
        if len(set(value)) != len(value):
            raise ValueError("epsilon values repeat")
        return value


class CompleteSpec(_Strict):
    """Branch and bound on every sample the incomplete pass leaves unknown (verifier/bab)."""

    timeout_s: PosFloat = Field(30.0, description="budget per sample and epsilon, seconds")
    mode: Literal["auto", "input", "relu"] = Field(
        "auto", description="input splitting, ReLU splitting, or auto (input for <= 16 inputs under norm inf)"
    )
    memory_mb: PosFloat = Field(1024.0, description="cap on the stored sub-domains per sample")


class ExternalSpec(_Strict):
    """An external verifier for the samples uverify's own stages leave unknown: any solver that speaks
    the VNN-LIB 2.0 solver command line (chapter 5), run as `COMMAND verify QUERY.vnnlib --network
    N=MODEL.onnx --timeout S` (vnn/external.py)."""

    command: str = Field(min_length=1, description="the solver's command line, split like a shell does")
    timeout_s: PosFloat = Field(60.0, description="budget per sample and epsilon, seconds")


class VerifySpec(_Strict):
    method: BoundMethod = BoundMethod.CROWN
    batch_size: PosInt = 64
    complete: CompleteSpec | None = Field(None, description="complete verification; off when absent")
    external: ExternalSpec | None = Field(None, description="an external VNN-LIB solver; off when absent")

    @model_serializer(mode="wrap")
    def _drop_unset_complete(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Absent stays absent: a spec without `complete` or `external` dumps, and so hashes, as it did
        before the keys."""
        data = handler(self)
        for key in ("complete", "external"):
            if isinstance(data, dict) and data.get(key, 0) is None:
                del data[key]
        return data


class AttackSpec(_Strict):
    steps: PosInt = 50
    restarts: PosInt = 3
    step_size: PosFloat | None = Field(None, description="step as a multiple of epsilon; default 2.5/steps")
    loss: Literal["margin", "ce"] = "margin"
    seed: Int = 0


class GateSpec(_Strict):
    metric: GateMetric = GateMetric.CERTIFIED_ACCURACY
    max_drop: Float = Field(0.02, ge=0.0, le=1.0)


class StudySpec(_Strict):
    """How `uverify study` presents and runs the grid; it never changes a result, so a study's runs and
    reports carry the default and a new headline re-renders the tables without retraining."""

    headline_epsilon: PosFloat | None = Field(
        None, description="the sigma of the seed-layout tables; one of property.epsilon (default: the middle one)"
    )
    threads: PosInt | None = Field(
        None, description="torch threads while the study runs (default: torch's); 1 suits small models"
    )


def _check_address(value: str | None) -> str | None:
    """A Dask scheduler address as `tcp://HOST:PORT` (or tls://): anything else would be guessed at."""
    if value is None:
        return None
    scheme, sep, rest = value.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or scheme not in ("tcp", "tls") or not colon or not host or "/" in rest or not port.isdigit():
        raise ValueError("must look like tcp://HOST:PORT")
    if not 1 <= int(port) <= 65535:
        raise ValueError("the port must be between 1 and 65535")
    return value


class ComputeSpec(_Strict):
    """Where independent tasks (SISA shards, study cells) run; it never changes a result, so it is left
    out of every spec hash and of the spec a run records (compute.py)."""

    executor: Literal["serial", "processes", "dask"] = Field(
        "serial", description="serial (the reference), a local process pool, or Dask distributed"
    )
    workers: PosInt | None = Field(
        None, description="processes / Dask LocalCluster workers (default: the CPU count); with an address, wait for N"
    )
    address: Annotated[str | None, AfterValidator(_check_address)] = Field(
        None, description="a running Dask scheduler, tcp://HOST:PORT; without it, dask starts a LocalCluster"
    )
    threads: PosInt | None = Field(
        None, description="torch threads per task (default: cores / workers locally, 1 on a scheduler's workers)"
    )

    @model_validator(mode="after")
    def _fits_executor(self) -> ComputeSpec:
        problem = None
        if self.executor == "serial" and self.workers is not None:
            problem = ("workers", "the serial executor runs one task at a time; choose processes or dask")
        elif self.executor == "serial" and self.threads is not None:
            problem = ("threads", "the serial executor keeps torch's threads (a study's: study.threads)")
        elif self.executor != "dask" and self.address is not None:
            problem = ("address", "only the dask executor connects to a scheduler")
        if problem is not None:
            error = PydanticCustomError("value_error", problem[1])
            raise ValidationError.from_exception_data(
                "ComputeSpec", [InitErrorDetails(type=error, loc=(problem[0],), input=getattr(self, problem[0]))]
            )
        return self


class Spec(_Strict):
    name: str = Field(min_length=1)
    data: DataSpec
    model: ModelSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    unlearning: UnlearningSpec = Field(default_factory=UnlearningSpec)
    property: PropertySpec = Field(default_factory=PropertySpec)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    attack: AttackSpec = Field(default_factory=AttackSpec)
    gate: GateSpec = Field(default_factory=GateSpec)
    study: StudySpec = Field(default_factory=StudySpec)
    compute: ComputeSpec = Field(default_factory=ComputeSpec)

    @model_validator(mode="after")
    def _headline_in_sweep(self) -> Spec:
        wanted = self.study.headline_epsilon
        if wanted is not None and not any(math.isclose(wanted, e, rel_tol=1e-9) for e in self.property.epsilon):
            sweep = ", ".join(f"{e:g}" for e in self.property.epsilon)
            error = PydanticCustomError("value_error", f"must be one of property.epsilon ({sweep})")
            raise ValidationError.from_exception_data(
                "Spec", [InitErrorDetails(type=error, loc=("study", "headline_epsilon"), input=wanted)]
            )
        return self

    @model_serializer(mode="wrap")
    def _drop_default_study(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A spec without a `study` or `compute` section dumps, and so hashes, as it did before the
        section existed."""
        data = handler(self)
        if isinstance(data, dict) and self.study == StudySpec():
            data.pop("study", None)
        if isinstance(data, dict) and self.compute == ComputeSpec():
            data.pop("compute", None)
        return data

    def headline_epsilon(self) -> float:
        """The sigma of the seed-layout tables: `study.headline_epsilon` as the sweep writes it, else the
        sweep's middle value (sorted; the lower middle one for an even count)."""
        sweep = self.property.epsilon
        wanted = self.study.headline_epsilon
        if wanted is None:
            return sorted(sweep)[(len(sweep) - 1) // 2]
        return next(e for e in sweep if math.isclose(wanted, e, rel_tol=1e-9))

    def adversarial_or_default(self) -> AdversarialSpec:
        """The spec's adversarial training settings, or Madry-style defaults at the largest epsilon."""
        return self.train.adversarial or AdversarialSpec(epsilon=max(self.property.epsilon))


class CheckSpec(_Strict):
    """What a check needs of a spec, for `uverify check` on a model and samples without one: a name,
    the property, the bounds and the attack (a `Spec` has the same sections)."""

    name: str = Field(min_length=1)
    property: PropertySpec = Field(default_factory=PropertySpec)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    attack: AttackSpec = Field(default_factory=AttackSpec)


def spec_sha256(spec: Spec | CheckSpec) -> str:
    """A stable hash of the validated spec (defaults filled in), recorded in every exported model; the
    `compute` section is left out (where tasks run never changes what they compute)."""
    canonical = json.dumps(spec.model_dump(mode="json", exclude={"compute"}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
