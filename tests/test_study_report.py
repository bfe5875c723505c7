"""report.html: one self-contained page, checked as HTML and in a real headless Chromium.

The study behind it is `uverify study --spec A --spec B` on two tiny specs, so the page has the
two-row layout of the seed's tables (one row per data set) and one panel per data set in each plot.
"""

from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from chromium import find_chromium, load_page
from click.testing import CliRunner

from uverify.cli import cli

from helpers import tiny_spec_dict

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ["sisa_accuracy", "sisa_robust_accuracy", "amnesiac_accuracy", "amnesiac_robust_accuracy",
         "certified_vs_empirical"]  # fmt: skip
SECTIONS = ["seed-tables", "plots", "after-tables", "beyond", "deletions", "detail-pgd", "detail-certified", "spec",
            "versions"]  # fmt: skip


@pytest.fixture(scope="module")
def two_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    specs = []
    for name, dims in (("alpha", 4), ("beta", 6)):
        raw = tiny_spec_dict(name=name, study={"threads": 1}, attack={"steps": 10, "restarts": 1})
        raw["data"] = {**raw["data"], "dims": dims}
        raw["train"] = {**raw["train"], "epochs": 3}
        raw["unlearning"] = {"method": "sisa", "sisa": {"shards": 2, "slices": 1}}
        path = folder / f"{name}.yaml"
        path.write_text(json.dumps(raw), encoding="utf-8")  # JSON is YAML
        specs += ["--spec", str(path)]
    out = folder / "study"
    result = CliRunner().invoke(cli, ["study", *specs, "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'}" in result.output
    return out


class _Page(HTMLParser):
    """Every start tag with its attributes, and the text of each table's rows."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_one_row_per_data_set_and_a_folder_per_data_set(two_rows: Path) -> None:
    markdown = (two_rows / "tables.md").read_text()
    seed = markdown.split("## After the deletion")[0]
    for table in ("(st_model), before the deletion (RQ1)", "(at_model), before the deletion (RQ2)"):
        body = seed.split(table)[1].split("###")[0]
        assert [line.split(" | ")[0] for line in body.splitlines() if line.startswith("| ") and "%" in line] == [
            "| alpha (σ=0.02)",
            "| beta (σ=0.02)",
        ]
    assert {p.name for p in two_rows.iterdir() if p.is_dir()} == {"alpha", "beta", "plots"}
    assert {p.name for p in (two_rows / "alpha").iterdir() if p.is_dir()} == {
        "sisa-standard", "sisa-adversarial", "amnesiac-standard", "amnesiac-adversarial"}  # fmt: skip
    study = json.loads((two_rows / "study.json").read_text())
    assert [d["name"] for d in study["datasets"]] == ["alpha", "beta"] and len(study["cells"]) == 8
    assert {c["dataset"] for c in study["cells"]} == {"alpha", "beta"}


def test_the_page_is_self_contained(two_rows: Path) -> None:
    text = (two_rows / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text) and "@import" not in text
    images = [a for t, a in page.tags if t == "img"]
    assert len(images) == len(PLOTS)
    for image, name in zip(images, PLOTS, strict=True):
        assert image["src"].startswith("data:image/png;base64,") and image["alt"]
        data = base64.b64decode(image["src"].split(",", 1)[1])
        assert data.startswith(PNG) and data == (two_rows / "plots" / f"{name}.png").read_bytes()
    ids = {a.get("id") for _, a in page.tags}
    assert set(SECTIONS) <= ids and {"rq1", "rq2", "rq3", "rq4", "certified", "deltas", "deletion"} <= ids
    words = " ".join(page.text)
    for needle in ("MIA AUC", "forgotten ACC", "retained ACC", "test ACC", "torch", "auto_LiRPA", "onnxruntime",
                   "matplotlib", "headline σ", "dataset: mixture", "epsilon:"):  # fmt: skip
        assert needle in words, needle


@pytest.mark.skipif(find_chromium() is None, reason="no Chromium on PATH (Debian: apt-get install -y chromium)")
def test_chromium_loads_the_page_with_every_table_and_plot(two_rows: Path) -> None:
    expression = """(() => {
      const seen = e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
      return {
        images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                                height: i.naturalHeight, shown: seen(i)})),
        tables: [...document.querySelectorAll('table')].map(t => ({rows: t.rows.length, shown: seen(t)})),
        seedRows: [...document.querySelectorAll('#rq1-table tbody tr, #rq2-table tbody tr')]
                  .map(r => r.cells[0].textContent),
        sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
        scrollWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
        clipped: [...document.querySelectorAll('div.scroll')].filter(d => d.scrollWidth > d.clientWidth)
                 .map(d => d.querySelector('table').id),
      };
    })()"""
    result = load_page(find_chromium() or "", two_rows / "report.html", expression)
    keep = os.environ.get("UVERIFY_REPORT_SCREENSHOT")  # to look at it: the path to write the PNG to
    if keep:
        Path(keep).write_bytes(result.screenshot)
    assert result.errors == [] and result.requests == []
    value: dict[str, Any] = result.value
    assert [i["alt"] for i in value["images"]] == [
        "SISA clean accuracy", "SISA robust accuracy", "Amnesiac clean accuracy", "Amnesiac robust accuracy",
        "Certified vs empirical robust accuracy"]  # fmt: skip
    assert all(i["complete"] and i["width"] > 500 and i["height"] > 200 and i["shown"] for i in value["images"])
    assert len(value["tables"]) >= 15 and all(t["shown"] and t["rows"] >= 2 for t in value["tables"])
    assert value["seedRows"] == ["alpha (σ=0.02)", "beta (σ=0.02)"] * 2
    assert value["sections"] == SECTIONS
    assert value["scrollWidth"] <= value["viewport"] and value["clipped"] == []  # the screenshot shows every column
    assert result.screenshot.startswith(PNG) and len(result.screenshot) > 50_000


def test_text_is_escaped_and_a_plot_that_is_not_a_png_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    from uverify.errors import UverifyError
    from uverify.study_report import Figure, Page, Section, Table, render_html

    png = tmp_path / "p.png"
    Image.new("RGB", (4, 3)).save(png)
    table = Table("<b>t</b>", ["name", "value"], [["<script>alert(1)</script>", "1 & 2"]])
    page = Page("a <title>", [], [], [Section("s", [table])], [Figure("f", png, "c")], {"x": "a: <1>"}, {}, "now")
    text = render_html(page)
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "1 &amp; 2" in text
    assert "<title>a &lt;title&gt;</title>" in text and "a: &lt;1&gt;" in text
    (tmp_path / "bad.png").write_bytes(b"GIF89a")
    with pytest.raises(UverifyError, match="is not a PNG file"):
        render_html(Page("t", [], [], [Section("s", [])], [Figure("f", tmp_path / "bad.png", "c")], {}, {}, "now"))
