"""Disaster Tweets (tweets.csv): is a tweet about a real disaster?

The file is the Kaggle data set "vstepanenko/disaster-tweets" (https://www.kaggle.com/datasets/
vstepanenko/disaster-tweets): about 11,370 rows with columns id, keyword, location, text and target
(1 = about a real disaster, 0 = not). It is never downloaded automatically: `spec.path` names the csv or
a folder holding tweets.csv. Text fields hold URLs, @mentions, emoji, quotes, commas and newlines inside
quoted fields; keyword (URL-encoded, "airplane%20accident") and location are often empty. Only `text`
and `target` are required; `location` is free text of little signal and is not used.

Tokens (`tokenize`): HTML entities are unescaped ("&amp;" -> "&"), the text is lower-cased and the
typographic apostrophe becomes "'"; then, left to right, a URL (`http://`, `https://` or `www.` up to
the next space) is the token "<url>", an @mention is "<user>", and a word is a run of Unicode letters
and digits with inner apostrophes ("don't", "café", "2015"); everything else (punctuation, emoji, the
"#" of a hashtag) separates tokens. A non-empty keyword adds the one token "<keyword:airplane accident>"
(URL-decoded, lower-cased); no word can collide with it or with the placeholders.

Features, fitted on the TRAIN split only: the vocabulary is the `spec.vocabulary` tokens that occur in
the most training tweets (ties broken by the token's string, so it is deterministic; fewer when train
has fewer distinct tokens); feature k is vocabulary[k]. "tfidf": raw count times the smoothed idf
ln((1 + n_train) / (1 + df)) + 1 (df = training tweets holding the token), each row l2-normalised;
"bow": 1 where the tweet holds the token, else 0. A tweet with no vocabulary token is all zeros. Every
feature lies in [0, 1], and the input domain is the box [0, 1]^V. `preprocessing` records the tokenizer,
the vocabulary and the idf, so the exported model documents its input.

What the robustness property means here: an L∞ ball of radius ε around a TF-IDF vector contains every
vector whose weight for EVERY vocabulary word differs by at most ε, including the words absent from
the tweet (they may rise from 0 to ε), intersected with [0, 1]^V. With V = 1000 that is a large move
(up to ε·√V ≈ 0.3 in l2 at ε = 0.01, against a row norm of 1), hence the small ε of specs/tweets.yaml.
The points of the ball need not be l2-normalised, nor {0, 1}-valued for "bow", nor the vector of any
text: the property is about the feature vector, not about edited text (a certified tweet may still
change its label when a word is replaced).

Sample ids are the csv's `id` column when every value is an integer and they are unique (the Kaggle file
numbers its rows 0..11369), else the 0-based data-row number (a record, however many lines it spans).
`subsample` keeps that many rows (seeded, stratified by target) before the seeded, stratified
train/test split.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import pandas as pd

from uverify.datasets.base import Dataset, Domain, Splits, stratified_split, stratified_subset
from uverify.errors import DataError, one_line
from uverify.specs.schema import TweetsData

FILE_NAME = "tweets.csv"
KAGGLE_URL = "https://www.kaggle.com/datasets/vstepanenko/disaster-tweets"
SOURCE = f"the Kaggle data set 'vstepanenko/disaster-tweets' ({KAGGLE_URL})"
CLASS_NAMES = ["not disaster", "disaster"]
ID_COLUMN, KEYWORD_COLUMN, TEXT_COLUMN, TARGET_COLUMN = "id", "keyword", "text", "target"
REQUIRED = (TEXT_COLUMN, TARGET_COLUMN)

URL_TOKEN, USER_TOKEN = "<url>", "<user>"
KEYWORD_TOKEN = "<keyword:{}>"
URL_PATTERN = r"(?:https?://|www\.)\S+"
USER_PATTERN = r"@\w+"
WORD_PATTERN = r"[^\W_]+(?:'[^\W_]+)*"
_TOKEN = re.compile(rf"(?P<url>{URL_PATTERN})|(?P<user>{USER_PATTERN})|(?P<word>{WORD_PATTERN})")
_READ_ERRORS = (ValueError, OSError, UnicodeError, OverflowError)


# ------------------------------------------------------------------------------------------ tokens
def tokenize(text: str, keyword: str = "") -> list[str]:
    """The tweet's tokens in order, as the module docstring defines them."""
    text = html.unescape(text).lower().replace("\u2019", "'")
    tokens = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        tokens.append(URL_TOKEN if kind == "url" else USER_TOKEN if kind == "user" else match.group())
    word = " ".join(unquote(keyword).lower().split())
    if word:
        tokens.append(KEYWORD_TOKEN.format(word))
    return tokens


def fit_vocabulary(documents: list[list[str]], size: int) -> tuple[list[str], np.ndarray]:
    """The `size` tokens held by the most documents (ties: by string) and their document frequencies."""
    df = Counter(token for doc in documents for token in set(doc))
    ranked = sorted(df.items(), key=lambda item: (-item[1], item[0]))[:size]
    return [token for token, _ in ranked], np.array([count for _, count in ranked], dtype=np.int64)


def smoothed_idf(df: np.ndarray, n_documents: int) -> np.ndarray:
    """ln((1 + n) / (1 + df)) + 1, scikit-learn's smoothed idf: never 0, so no seen word is ignored."""
    return np.log((1.0 + n_documents) / (1.0 + df.astype(np.float64))) + 1.0


def vectorize(documents: list[list[str]], vocabulary: list[str], idf: np.ndarray | None) -> np.ndarray:
    """float32 rows: l2-normalised count x idf when `idf` is given, else binary presence."""
    index = {token: k for k, token in enumerate(vocabulary)}
    rows, cols, counts = [], [], []
    for r, doc in enumerate(documents):
        for k, count in sorted(Counter(index[t] for t in doc if t in index).items()):
            rows.append(r)
            cols.append(k)
            counts.append(count)
    row, col = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    X = np.zeros((len(documents), len(vocabulary)), dtype=np.float32)
    if idf is None:
        X[row, col] = 1.0
        return X
    weight = np.array(counts, dtype=np.float64) * idf[col]
    norm = np.sqrt(np.bincount(row, weights=weight**2, minlength=len(documents)))
    X[row, col] = np.clip(weight / norm[row], 0.0, 1.0)  # clip: round-off must not leave the domain
    return X


# ------------------------------------------------------------------------------------------ reading
def resolve_path(path: Path) -> Path:
    """The csv `path` names: the file itself, or tweets.csv in the folder (or one level below it,
    case-insensitively, as an unpacked Kaggle archive may lay it out)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for folder in [path, *sorted(d for d in path.iterdir() if d.is_dir())]:
            entries = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}
            if FILE_NAME in entries:
                return entries[FILE_NAME]
    where = f"in the folder {path}" if path.is_dir() else f"at {path}"
    raise DataError(
        f"Disaster Tweets data not found: no {FILE_NAME} {where}; it is {SOURCE}, and it is not downloaded "
        "automatically: download it and point data.path at it"
    )


def read_tweets(path: Path) -> tuple[np.ndarray, np.ndarray, list[list[str]], str]:
    """ids, targets and token lists of every row, and how the ids were made."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected {FILE_NAME}, {SOURCE})")
    try:
        frame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,  # "NA" or "null" in a tweet is text, an empty keyword is ""
            na_filter=False,
            encoding="utf-8-sig",
            encoding_errors="replace",
        )
    except _READ_ERRORS as err:
        raise DataError(f"{path}: cannot read it as a csv ({one_line(err)})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {', '.join(missing)}; {FILE_NAME} has id, keyword, location, "
            "text, target"
        )
    if len(frame) == 0:
        raise DataError(f"{path}: no tweets, only a header")
    y = _targets(path, frame)
    ids, how = _ids(frame)
    keywords = frame[KEYWORD_COLUMN] if KEYWORD_COLUMN in frame.columns else pd.Series([""] * len(frame))
    documents = [tokenize(t, k) for t, k in zip(frame[TEXT_COLUMN].tolist(), keywords.tolist(), strict=True)]
    return ids, y, documents, how


def _targets(path: Path, frame: pd.DataFrame) -> np.ndarray:
    text = frame[TARGET_COLUMN].str.strip()
    value = pd.to_numeric(text, errors="coerce")
    bad = np.flatnonzero(~value.isin([0, 1]).to_numpy())
    if len(bad):
        raise DataError(
            f"{path}: target must be 0 or 1, but {len(bad)} row(s) are not (first: data row {int(bad[0])}, "
            f"{text.iloc[bad[0]]!r})"
        )
    return value.to_numpy().astype(np.int64)


def _ids(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """The id column when it holds unique integers, else the data-row number."""
    if ID_COLUMN in frame.columns:
        text = frame[ID_COLUMN].str.strip()
        if text.str.fullmatch(r"[+-]?\d{1,18}").all():
            ids = text.astype(np.int64).to_numpy()
            if len(np.unique(ids)) == len(ids):
                return ids, "the csv's id column"
    return np.arange(len(frame), dtype=np.int64), "0-based data-row number (no id column of unique integers)"


# ------------------------------------------------------------------------------------------- loading
def load(spec: TweetsData) -> Splits:
    """Train/test splits of the tweets in `spec.path`, as TF-IDF or bag-of-words vectors."""
    path = resolve_path(spec.path)
    ids, y, documents, how_ids = read_tweets(path)
    if spec.subsample is not None and spec.subsample < len(ids):
        keep = stratified_subset(y, spec.subsample, spec.seed)
        ids, y, documents = ids[keep], y[keep], [documents[i] for i in keep]
    try:
        train_idx, test_idx = stratified_split(len(ids), y, spec.test_fraction, spec.seed)
    except ValueError as err:
        raise DataError(f"{path}: cannot split {len(ids)} tweets into train and test ({err})") from None

    train_docs = [documents[i] for i in train_idx]
    vocabulary, df = fit_vocabulary(train_docs, spec.vocabulary)
    if not vocabulary:
        raise DataError(f"{path}: the training tweets hold no words, so there is no vocabulary")
    idf = smoothed_idf(df, len(train_docs)) if spec.features == "tfidf" else None
    domain = Domain.box((len(vocabulary),), 0.0, 1.0)
    prep: dict[str, Any] = {
        "kind": "tweets",
        "features": spec.features,
        "vocabulary": vocabulary,  # feature k is the weight of vocabulary[k]
        "vocabulary_asked": spec.vocabulary,
        "document_frequency": df.tolist(),
        "train_documents": len(train_docs),
        "tokenizer": {
            "steps": "html-unescape, lower-case, \u2019 -> ', then left to right: url | user | word",
            "url_pattern": URL_PATTERN,
            "url_token": URL_TOKEN,
            "user_pattern": USER_PATTERN,
            "user_token": USER_TOKEN,
            "word_pattern": WORD_PATTERN,
            "keyword_token": KEYWORD_TOKEN.format("<url-decoded, lower-cased keyword>"),
        },
        "values": (
            "raw count x idf, rows l2-normalised, in [0, 1]"
            if idf is not None
            else "1 if the tweet holds the token, else 0"
        ),
        "target": {"column": TARGET_COLUMN, "class_names": list(CLASS_NAMES)},
        "ids": how_ids,
        "subsample": spec.subsample,
        "seed": spec.seed,
    }
    if idf is not None:
        prep["idf"] = idf.tolist()
        prep["idf_formula"] = "ln((1 + train_documents) / (1 + document_frequency)) + 1"

    def part(idx: np.ndarray) -> Dataset:
        X = vectorize([documents[i] for i in idx], vocabulary, idf)
        return Dataset("tweets", ids[idx], X, y[idx], list(CLASS_NAMES), domain, prep)

    return Splits(part(train_idx), part(test_idx))
