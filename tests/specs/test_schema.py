from __future__ import annotations

from pathlib import Path

import pytest

from uverify.errors import SpecError
from uverify.specs import shipped_specs
from uverify.specs.load import load_spec, validate_spec
from uverify.specs.schema import DigitsData, LoanData, MixtureData, Spec, spec_sha256

from helpers import tiny_spec_dict


def test_shipped_specs_load_by_name_and_path() -> None:
    assert {"mixture", "digits", "loan"} <= set(shipped_specs())
    for name in ("mixture", "digits", "loan"):
        by_name = load_spec(name)
        by_path = load_spec(Path(__file__).resolve().parents[2] / "specs" / f"{name}.yaml")
        assert by_name == by_path
    assert isinstance(load_spec("mixture").data, MixtureData)
    assert isinstance(load_spec("digits").data, DigitsData)
    assert isinstance(load_spec("loan").data, LoanData)
    assert load_spec("loan").data.path.is_absolute()  # ~ expanded


def test_every_shipped_spec_validates_and_survives_a_json_round_trip() -> None:
    """Runs store their spec as JSON and read it back (a Path-valued field once failed to)."""
    for name in shipped_specs():
        spec = load_spec(name)
        assert Spec.model_validate_json(spec.model_dump_json()) == spec, name


def test_defaults_and_normalised_values() -> None:
    spec = validate_spec(tiny_spec_dict(property={"norm": 2, "epsilon": 0.1}))
    assert spec.property.norm == "2" and spec.property.epsilon == [0.1]
    assert validate_spec(tiny_spec_dict(property={"norm": float("inf")})).property.norm == "inf"
    assert validate_spec(tiny_spec_dict(property={"norm": "L1"})).property.norm == "1"
    assert spec.verify.method == "CROWN" and spec.unlearning.delete.fraction == 0.01
    assert spec.adversarial_or_default().epsilon == 0.1


def test_hash_is_stable_and_sensitive() -> None:
    a, b = validate_spec(tiny_spec_dict()), validate_spec(tiny_spec_dict())
    assert spec_sha256(a) == spec_sha256(b)
    assert spec_sha256(a) != spec_sha256(validate_spec(tiny_spec_dict(name="other")))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("name: x\ndata: {dataset: mixture\n", "malformed YAML at line"),
        ("", "empty"),
        ("- a\n- b\n", "not a mapping"),
        ("name: x\nname: y\ndata: {dataset: mixture}\nmodel: {arch: mlp}\n", "duplicate key 'name'"),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\ntrian: {}\n",
            "trian: unknown key (did you mean 'train'?)",
        ),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\ntrain: {epoch: 3}\n",
            "train.epoch: unknown key (did you mean 'epochs'?)",
        ),
        (
            "name: x\ndata: {dataset: mixture, clases: 3}\nmodel: {arch: mlp}\n",
            "data.clases: unknown key (did you mean 'classes'?)",
        ),
        (
            "name: x\ndata: {dataset: mixtur}\nmodel: {arch: mlp}\n",
            "data.dataset: unknown value 'mixtur' (did you mean 'mixture'?)",
        ),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp, hidden: [8, -1]}\n",
            "model.hidden[1]: Input should be greater than 0",
        ),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\ntrain: {epochs: many}\n",
            "train.epochs: Input should be a valid integer",
        ),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\nproperty: {epsilon: [-0.1]}\n",
            "property.epsilon[0]: Input should be greater than 0",
        ),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\nproperty: {epsilon: [0.1, 0.1]}\n",
            "epsilon values repeat",
        ),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\ntrain: {adversarial: {epsilon: .inf}}\n",
            "train.adversarial.epsilon",
        ),
        ("name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\nproperty: {epsilon: .nan}\n", "property.epsilon"),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\nproperty: {norm: 3}\n",
            "property.norm: invalid value",
        ),
        ("name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\nverify: {method: crown}\n", "(did you mean 'CROWN'?)"),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\nunlearning: {delete: {}}\n",
            "unlearning.delete: give exactly one of",
        ),
        ("name: x\nmodel: {arch: mlp}\n", "data: required key is missing"),
        ("name: x\ndata: {path: a.csv}\nmodel: {arch: mlp}\n", "data.dataset: required key is missing"),
        ("name: x\ndata: {dataset: loan}\nmodel: {arch: mlp}\n", "data.path: required key is missing"),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\ntrain: {adversarial: {epsilon: 0.1, stepz: 3}}\n",
            "train.adversarial.stepz: unknown key (did you mean 'steps'?)",
        ),
        (
            "name: x\ndata: {dataset: mixture}\nmodel: {arch: mlp}\ntrain: !!python/object/apply:os.system [echo hi]\n",
            "malformed YAML",
        ),
    ],
)
def test_bad_specs_give_one_line_with_the_key_path(write_spec, content: str, expected: str) -> None:
    path = write_spec(content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_missing_spec_names_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no such file.*mixture"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="no such file"):
        load_spec("mixtur")
    with pytest.raises(SpecError, match="not a file"):
        load_spec(tmp_path)


def test_overrides_are_validated_like_the_file(write_spec) -> None:
    path = write_spec(tiny_spec_dict())
    assert load_spec(path, {"train.epochs": 7}).train.epochs == 7
    with pytest.raises(SpecError, match=r"train\.epochs"):
        load_spec(path, {"train.epochs": 0})


def test_an_error_blames_the_flag_only_when_the_flag_was_given(write_spec) -> None:
    flags = {"property.epsilon": "--epsilon", "verify.method": "--bounds"}
    bad_file = write_spec(tiny_spec_dict(property={"norm": "inf", "epsilon": [0.0]}), "bad.yaml")
    with pytest.raises(SpecError) as from_file:
        load_spec(bad_file, {}, flags)
    assert str(from_file.value).startswith(f"spec {bad_file}: property.epsilon") and "--epsilon" not in str(
        from_file.value
    )
    with pytest.raises(SpecError) as from_flag:
        load_spec(write_spec(tiny_spec_dict()), {"property.epsilon": [0.0]}, flags)
    assert str(from_flag.value).startswith("--epsilon: ")
