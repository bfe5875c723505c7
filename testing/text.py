"""Small synthetic stand-ins for text data files, written in exactly the real format.

`write_tweets_csv` writes a tweets.csv as the Kaggle data set "vstepanenko/disaster-tweets" lays it out:
header id,keyword,location,text,target, ids 0..n-1, written by pandas' `to_csv` (fields quoted only when
they hold a comma, quote or newline, quotes doubled). Its text carries what the loader must survive:
URLs, @mentions, hashtags, emoji, HTML entities, accented words, commas, quotes and newlines inside
quoted fields; keyword is URL-encoded ("airplane%20accident") or empty, location is often empty.

The text is learnable: a disaster tweet draws most of its topic words from a disaster vocabulary and an
everyday tweet from an everyday one, both padded with shared noise words, and a quarter of the tweets
borrow one word from the other class ("this mixtape is fire"), so a small model beats the majority
class without being perfect. Keywords and locations do not depend on the class. The share of disaster
tweets is 30% (the real file has about 19%), so that tiny fixtures hold both classes in every split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _words(text: str) -> tuple[str, ...]:
    """A word list written as text, which reads better than a literal of quoted words."""
    return tuple(text.split())


DISASTER_WORDS = _words(
    "fire wildfire earthquake flood flooding evacuation evacuated killed injured collapse collapsed "
    "explosion storm hurricane tornado emergency rescue casualties debris derailment ambulance burning "
    "smoke survivors tsunami landslide crash dead damage destroyed"
)
EVERYDAY_WORDS = _words(
    "love lol pizza coffee weekend music song movie game birthday happy friends party dinner beach "
    "summer cat dog funny cute shopping video album school work tired sleep omg awesome playlist"
)
NOISE_WORDS = _words(
    "the a to in of and is my this on just i you it for at now today people so what we all get like "
    "up out via news time still"
)
KEYWORDS = (
    "ablaze",
    "accident",
    "aftershock",
    "airplane%20accident",
    "bush%20fires",
    "body%20bags",
    "deluge",
    "fire",
    "flood",
    "sinking",
    "wreckage",
    "windstorm",
)
LOCATIONS = ("London, UK", "Nairobi, Kenya", "Worldwide \U0001f30d", "ig: @somewhere", "São Paulo", "NYC", "earth")
EMOJI = ("\U0001f525", "\U0001f602", "\U0001f64f", "\u2764\ufe0f", "\U0001f30a")
ACCENTED = ("café", "naïve", "Zürich", "jalapeño")
DISASTER_SHARE = 0.3


def _handle(rng: np.random.Generator) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(letters[i] for i in rng.integers(0, 26, size=int(rng.integers(3, 9)))) + str(rng.integers(0, 99))


def _url(rng: np.random.Generator) -> str:
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    scheme = "https" if rng.random() < 0.5 else "http"
    return scheme + "://t.co/" + "".join(chars[i] for i in rng.integers(0, 62, 10))


def _tweet(rng: np.random.Generator, disaster: bool) -> str:
    """One tweet's text: topic words of its class, noise words, sometimes a borrowed word, decorated."""
    own, other = (DISASTER_WORDS, EVERYDAY_WORDS) if disaster else (EVERYDAY_WORDS, DISASTER_WORDS)
    words = [own[i] for i in rng.integers(0, len(own), size=int(rng.integers(2, 4)))]
    words += [NOISE_WORDS[i] for i in rng.integers(0, len(NOISE_WORDS), size=int(rng.integers(3, 8)))]
    if rng.random() < 0.25:
        words.append(other[int(rng.integers(0, len(other)))])
    words = [words[i] for i in rng.permutation(len(words))]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    if rng.random() < 0.2:
        k = int(rng.integers(0, len(words)))
        words[k] = "#" + words[k].upper() if rng.random() < 0.3 else "#" + words[k]
    if rng.random() < 0.25:
        k = int(rng.integers(1, len(words)))
        words[k - 1] += ","
    if rng.random() < 0.15:
        k = int(rng.integers(0, len(words) - 1))
        words[k], words[k + 1] = '"' + words[k], words[k + 1] + '"'
    if rng.random() < 0.1:
        words.insert(int(rng.integers(0, len(words) + 1)), "&amp;")
    if rng.random() < 0.05:
        words.insert(int(rng.integers(0, len(words) + 1)), ACCENTED[int(rng.integers(0, len(ACCENTED)))])
    text = " ".join(words)
    if rng.random() < 0.15:
        text = text.replace(" ", "\n", 1)
    if rng.random() < 0.25:
        text = "@" + _handle(rng) + " " + text
    if rng.random() < 0.2:
        text += " " + EMOJI[int(rng.integers(0, len(EMOJI)))]
    if rng.random() < 0.4:
        text += " " + _url(rng)
    return text


def tweets_frame(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """The rows of a synthetic tweets.csv (columns id, keyword, location, text, target)."""
    rng = np.random.default_rng(seed)
    target = (rng.random(n_rows) < DISASTER_SHARE).astype(np.int64)
    if n_rows >= 4:  # both classes, even in a tiny file
        target[:2] = [0, 1]
    keyword = [KEYWORDS[i] for i in rng.integers(0, len(KEYWORDS), size=n_rows)]
    keyword = ["" if rng.random() < 0.05 else k for k in keyword]
    location = ["" if rng.random() < 0.35 else LOCATIONS[int(rng.integers(0, len(LOCATIONS)))] for _ in range(n_rows)]
    text = [_tweet(rng, bool(t)) for t in target]
    return pd.DataFrame(
        {"id": np.arange(n_rows), "keyword": keyword, "location": location, "text": text, "target": target}
    )


def write_tweets_csv(path: str | Path, n_rows: int, seed: int = 0) -> Path:
    """Write `n_rows` synthetic tweets to `path` in tweets.csv's format."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tweets_frame(n_rows, seed).to_csv(target, index=False, lineterminator="\n", encoding="utf-8")
    return target
