"""The Disaster Tweets loader on synthetic files in the real format (uverify.testing.text), and the
whole pipeline on it: ONNX metadata, CROWN against PGD, the study grid."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

import uverify.datasets
from uverify.datasets import tweets
from uverify.datasets.base import Splits
from uverify.errors import DataError
from uverify.specs.load import validate_spec
from uverify.specs.schema import Spec, TweetsData
from uverify.testing.text import tweets_frame, write_tweets_csv

N_ROWS = 600
VOCABULARY = 100


def spec(path: Path, **overrides: Any) -> TweetsData:
    return TweetsData(dataset="tweets", path=path, **{"vocabulary": VOCABULARY, **overrides})


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tweets_csv(tmp_path_factory.mktemp("tweets") / tweets.FILE_NAME, N_ROWS, seed=0)


@pytest.fixture(scope="module")
def splits(csv_path: Path) -> Splits:
    return tweets.load(spec(csv_path))


def together(s: Splits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.concatenate([s.train.ids, s.test.ids])
    order = np.argsort(ids)
    return ids[order], np.concatenate([s.train.X, s.test.X])[order], np.concatenate([s.train.y, s.test.y])[order]


def assert_same(a: Splits, b: Splits, *, preprocessing: bool = True) -> None:
    for name in ("train", "test"):
        x, z = a.split(name), b.split(name)
        assert np.array_equal(x.ids, z.ids) and np.array_equal(x.y, z.y) and np.array_equal(x.X, z.X)
    assert a.train.preprocessing == b.train.preprocessing or not preprocessing


def one_line(excinfo: pytest.ExceptionInfo[DataError], *needles: str) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# ------------------------------------------------------------------------------------------ loading
def test_loads_tfidf_rows_in_the_unit_box(csv_path: Path, splits: Splits) -> None:
    ids, _, y = together(splits)
    raw = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    assert np.array_equal(ids, raw["id"].astype(np.int64))  # the id column, every row kept
    assert np.array_equal(y, raw["target"].astype(np.int64))
    assert not set(splits.train.ids) & set(splits.test.ids)
    assert len(splits.test) == pytest.approx(0.2 * N_ROWS, abs=1)
    for part in (splits.train, splits.test):
        assert part.X.dtype == np.float32 and part.y.dtype == np.int64 and part.ids.dtype == np.int64
        assert part.X.shape == (len(part), VOCABULARY) and part.input_shape == (VOCABULARY,)
        assert part.class_names == ["not disaster", "disaster"] and set(np.unique(part.y)) == {0, 1}
        assert part.domain.contains(part.X).all() and part.X.min() >= 0.0 and part.X.max() <= 1.0
        norms = np.linalg.norm(part.X.astype(np.float64), axis=1)
        assert np.allclose(norms[norms > 0], 1.0, atol=1e-6)
    assert np.all(splits.train.domain.lower == 0.0) and np.all(splits.train.domain.upper == 1.0)
    prep = splits.train.preprocessing
    assert len(prep["vocabulary"]) == len(prep["idf"]) == VOCABULARY and prep["features"] == "tfidf"
    json.dumps(prep, allow_nan=False)  # lands in the ONNX metadata
    assert uverify.datasets.registered().count("tweets") == 1
    assert_same(uverify.datasets.load(spec(csv_path)), splits)  # through the registry
    assert_same(tweets.load(spec(csv_path.parent)), splits)  # a folder holding tweets.csv


def test_tokenizer_placeholders_and_words() -> None:
    text = 'Forest FIRE, near La Ronge\n"RUN" @Bob_99 #Wildfire http://t.co/AbC &amp; don\u2019t café 🔥 www.x.org/a?b'
    assert tweets.tokenize(text, "bush%20fires") == [
        "forest", "fire", "near", "la", "ronge", "run", "<user>", "wildfire", "<url>",
        "don't", "café", "<url>", "<keyword:bush fires>",
    ]  # fmt: skip
    assert tweets.tokenize("", "") == [] and tweets.tokenize("a_b", "") == ["a", "b"]


def test_vocabulary_and_idf_are_fitted_on_train_only(csv_path: Path, splits: Splits, tmp_path: Path) -> None:
    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    by_id = frame.set_index(frame["id"].astype(np.int64))
    train_docs = [tweets.tokenize(by_id.at[i, "text"], by_id.at[i, "keyword"]) for i in splits.train.ids]
    df = Counter(t for doc in train_docs for t in set(doc))
    expected = sorted(df, key=lambda t: (-df[t], t))[:VOCABULARY]
    prep = splits.train.preprocessing
    assert prep["vocabulary"] == expected and prep["train_documents"] == len(splits.train)
    n = len(train_docs)
    assert np.allclose(prep["idf"], [math.log((1 + n) / (1 + df[t])) + 1 for t in expected])

    # a word in a third of the test tweets, and in no training tweet, is frequent enough to be a feature
    # if the vocabulary saw the test split: it must not be one
    test_rows = frame["id"].astype(np.int64).isin(splits.test.ids).to_numpy()
    marked = np.flatnonzero(test_rows)[::3]
    frame.loc[marked, "text"] = frame.loc[marked, "text"] + " zyzzyva zyzzyva"
    path = tmp_path / "tweets.csv"
    frame.to_csv(path, index=False, lineterminator="\n")
    after = tweets.load(spec(path))
    assert "zyzzyva" not in after.train.preprocessing["vocabulary"]
    assert_same(after, splits)  # nothing changes: the split depends on the labels, the features on train


def test_same_spec_same_arrays_and_another_seed_differs(csv_path: Path, splits: Splits) -> None:
    assert_same(tweets.load(spec(csv_path)), splits)
    other = tweets.load(spec(csv_path, seed=1))
    assert not np.array_equal(other.test.ids, splits.test.ids)


def test_bag_of_words_is_binary_presence(csv_path: Path, splits: Splits) -> None:
    bow = tweets.load(spec(csv_path, features="bow"))
    assert bow.train.preprocessing["vocabulary"] == splits.train.preprocessing["vocabulary"]
    assert "idf" not in bow.train.preprocessing
    for name in ("train", "test"):
        x = bow.split(name).X
        assert set(np.unique(x)) == {0.0, 1.0} and x.dtype == np.float32
        assert np.array_equal(x, (splits.split(name).X > 0).astype(np.float32))


def test_subsample_keeps_a_seeded_stratified_subset(csv_path: Path, splits: Splits) -> None:
    full_ids, _, full_y = together(splits)
    small = tweets.load(spec(csv_path, subsample=200))
    ids, _, y = together(small)
    assert len(ids) == 200 and np.isin(ids, full_ids).all()
    assert np.array_equal(y, full_y[np.searchsorted(full_ids, ids)])
    assert abs(y.mean() - full_y.mean()) < 0.01  # stratified
    assert_same(small, tweets.load(spec(csv_path, subsample=200)))
    assert not np.array_equal(together(tweets.load(spec(csv_path, subsample=200, seed=1)))[0], ids)
    assert_same(tweets.load(spec(csv_path, subsample=10**6)), splits, preprocessing=False)


def test_quoted_commas_quotes_and_newlines_parse(csv_path: Path, tmp_path: Path) -> None:
    text = csv_path.read_text(encoding="utf-8")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == N_ROWS + 1 and text.count("\n") > N_ROWS + 1  # records span several lines
    texts = [row[3] for row in rows[1:]]
    assert any("\n" in t for t in texts) and any('"' in t for t in texts) and any("," in t for t in texts)
    assert any("http" in t for t in texts) and any(t.startswith("@") for t in texts)
    assert any(row[1] == "" for row in rows[1:]) and any(row[2] == "" for row in rows[1:])

    path = tmp_path / "tweets.csv"
    path.write_text(
        'id,keyword,location,text,target\n7,,"Paris, France","Flood, flood!\n""Help"" now",1\n'
        '9,fire,,"calm, sunny\nday",0\n11,,,"flood calm",0\n13,,,"flood help",1\n',
        encoding="utf-8",
    )
    ids, y, documents, _ = tweets.read_tweets(path)
    assert list(ids) == [7, 9, 11, 13] and list(y) == [1, 0, 0, 1]
    assert documents[0] == ["flood", "flood", "help", "now"]
    assert documents[1] == ["calm", "sunny", "day", "<keyword:fire>"]
    together_ids = together(tweets.load(spec(path, test_fraction=0.5)))[0]
    assert list(together_ids) == [7, 9, 11, 13]


def test_ids_fall_back_to_row_numbers(tmp_path: Path) -> None:
    frame = tweets_frame(60, seed=2)
    for name, change in (("no-id", lambda f: f.drop(columns="id")), ("dup", lambda f: f.assign(id=1))):
        path = tmp_path / name / "tweets.csv"
        path.parent.mkdir()
        change(frame).to_csv(path, index=False)
        s = tweets.load(spec(path))
        ids, _, y = together(s)
        assert np.array_equal(ids, np.arange(60)) and np.array_equal(y, frame["target"])
        assert s.train.preprocessing["ids"].startswith("0-based data-row number")


def test_a_model_beats_the_majority_class(splits: Splits) -> None:
    model = LogisticRegression().fit(splits.train.X, splits.train.y)
    majority = max(np.mean(splits.test.y), 1 - np.mean(splits.test.y))
    assert model.score(splits.test.X, splits.test.y) > majority + 0.1


# ------------------------------------------------------------------------------------------- errors
def test_a_missing_file_names_tweets_csv_and_its_source(tmp_path: Path) -> None:
    for where in (tmp_path / "nowhere.csv", tmp_path):
        with pytest.raises(DataError) as excinfo:
            tweets.load(spec(where))
        one_line(excinfo, "tweets.csv", "vstepanenko/disaster-tweets", "kaggle.com")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"id,keyword,location,text,target\n", "no tweets", id="header-only"),
        pytest.param(b"id,keyword,location,text\n1,,,fire,\n", "target", id="no-target"),
        pytest.param(b"id,keyword,location,target\n1,,,1\n", "text", id="no-text"),
        pytest.param(b"id,text,target\n1,fire,1\n2,calm,2\n", "target must be 0 or 1", id="target-2"),
        pytest.param(b"id,text,target\n1,fire,yes\n2,calm,0\n", "'yes'", id="target-word"),
        pytest.param(b"id,text,target\n1,fire,\n2,calm,0\n", "target must be 0 or 1", id="target-empty"),
        pytest.param(b'id,text,target\n1,fire,1\n2,"calm,0\n', "", id="unclosed-quote"),
        pytest.param(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "", id="bytes"),
        pytest.param(b"\x00" * 300, "", id="nul-bytes"),
    ],
)
def test_bad_files_give_a_one_line_data_error(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "tweets.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        tweets.load(spec(path))
    one_line(excinfo, str(path), needle)


# ------------------------------------------------------------------------------ the pipeline on text
def tiny_tweets_spec(path: Path, **overrides: Any) -> Spec:
    raw: dict[str, Any] = {
        "name": "tiny-tweets",
        "data": {"dataset": "tweets", "path": str(path), "vocabulary": VOCABULARY, "subsample": 300, "samples": 20},
        "model": {"arch": "mlp", "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.01, "seed": 0, "adversarial": {"epsilon": 0.02, "steps": 2}},
        "property": {"norm": "inf", "epsilon": [0.005, 0.02]},
        "attack": {"steps": 10, "restarts": 1},
        "unlearning": {
            "method": "sisa",
            "sisa": {"shards": 2, "slices": 1},
            "amnesiac": {"repair_epochs": 1},
            "delete": {"fraction": 0.02, "seed": 0},
        },
    }
    return validate_spec(raw | overrides)


def test_exported_model_records_the_vocabulary_and_crown_never_certifies_what_pgd_breaks(
    csv_path: Path, splits: Splits, tmp_path: Path
) -> None:
    from uverify.models import read_metadata
    from uverify.pipeline import train_run
    from uverify.verifier.check import check
    from uverify.verifier.samples import samples_from_spec

    epsilons = [0.002, 0.05, 0.3]
    spec_ = tiny_tweets_spec(
        csv_path,
        unlearning={"method": "amnesiac"},
        train={"epochs": 5, "batch_size": 32, "lr": 0.01, "seed": 0},
        property={"norm": "inf", "epsilon": epsilons},
        data={"dataset": "tweets", "path": str(csv_path), "vocabulary": VOCABULARY, "samples": 40},
    )
    run = train_run(spec_, tmp_path / "run", adversarial=False, splits=splits, progress=False)
    assert run.test_accuracy > 0.85
    metadata = read_metadata(run.model_path)
    assert metadata["dataset"] == "tweets" and metadata["input_shape"] == [VOCABULARY]
    assert metadata["preprocessing"]["vocabulary"] == splits.train.preprocessing["vocabulary"]
    assert metadata["preprocessing"]["idf"] == splits.train.preprocessing["idf"]
    assert metadata["input_domain"]["upper"] == [1.0] * VOCABULARY

    samples, domain = samples_from_spec(spec_)
    report = check(run.model_path, spec_, samples, domain, progress=False, cross_check=True)  # raises if both
    small, large = report.result_at(epsilons[0]), report.result_at(epsilons[-1])
    assert small.counts.verified > 0
    assert large.counts.falsified > 0  # PGD does break samples, so the cross-check is not vacuous
    for row in report.samples:  # a sample broken at some epsilon is certified at no larger one
        broken = [e for e, v in zip(epsilons, row.verdicts, strict=True) if v == "falsified"]
        certified = [e for e, v in zip(epsilons, row.verdicts, strict=True) if v == "verified"]
        assert not broken or not certified or max(certified) < min(broken), row
    for r in report.results:
        assert r.certified_accuracy <= r.pgd_accuracy <= r.clean_accuracy


def test_the_study_grid_runs_on_tweets(csv_path: Path, tmp_path: Path) -> None:
    from uverify.study import study

    result = study(tiny_tweets_spec(csv_path), tmp_path / "out", progress=False, echo=lambda _: None)
    assert result.tables_markdown.is_file() and result.tables_json.is_file()
    assert set(json.loads(result.tables_json.read_text())) == {"pgd", "certified"}
    assert len(result.cells) == 4
    for cell in result.cells:
        assert (cell.run / "report_before.json").is_file() and (cell.run / "report_after.json").is_file()
        for report in (cell.before, cell.after):
            assert json.loads(report.model.metadata["preprocessing"])["kind"] == "tweets"  # JSON text in ONNX
            for r in report.results:
                assert r.certified_accuracy <= r.pgd_accuracy <= r.clean_accuracy, (cell.method, cell.training, r)
