import base64
import logging
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from recospark import io
from recospark.stages import report

pytestmark = pytest.mark.slow  # fits or whole stages per test: `make test` runs them, `make check` does not

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTION_IDS = ["data", "split", "comparison", "curves", "factors", "samples"]


class Page(HTMLParser):
    """Sections, tables (with their rows) and images of a report page."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.tables, self.notes, self.urls = [], [], {}, [], []
        self._table, self._note, self._section = None, False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "section":
            self._section = a["id"]
            self.sections.append(a["id"])
        elif tag == "img":
            self.images.append((self._section, a["src"]))
        elif tag == "table":
            self._table = a.get("id", f"t{len(self.tables)}")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "p" and a.get("class") == "note":
            self._note = True
            self.notes.append((self._section, ""))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "p":
            self._note = False

    def handle_data(self, data):
        if self._table and self.tables[self._table]:
            self.tables[self._table][-1].append(data)
        if self._note:
            sec, text = self.notes[-1]
            self.notes[-1] = (sec, text + data)


def parse(path) -> Page:
    page = Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    return page


def png_size(src: str) -> tuple[int, int]:
    """Width and height of a data-URI PNG, after checking it decodes as base64 and is a PNG."""
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_rating_plot_is_a_png_and_logs_nothing(caplog):
    from recospark.report.plots import rating_distribution

    with caplog.at_level(logging.INFO, logger="matplotlib"):
        png = rating_distribution({1.0: 3, 4.5: 2, 5.0: 1})
    assert png[:8] == PNG_MAGIC
    # ratings as category strings made matplotlib log two INFO lines per report ("parsable as floats")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("matplotlib")] == []


@pytest.fixture(scope="module")
def published_report(published):
    cfg, result = published
    return cfg, result["stages"]["report"]


def test_report_structure(published_report):
    cfg, result = published_report
    path = Path(result["path"])
    assert path == Path(io.output_path(cfg, "report", "index.html")) and path.is_file()
    assert io.read_manifest(cfg, "report")["sections"] == result["sections"]
    page = parse(path)
    assert page.sections == SECTION_IDS
    assert all(state == "ok" for state in result["sections"].values()), result["sections"]
    # data: distribution + long tail; split: 1; comparison: accuracy vs novelty; curves: ALS + SGD
    # (as train recorded them); factors: als, als_implicit, sgd
    by_section = {s: sum(1 for sec, _ in page.images if sec == s) for s in SECTION_IDS}
    assert by_section == {"data": 2, "split": 1, "comparison": 1, "curves": 2, "factors": 3, "samples": 0}
    for _, src in page.images:
        width, height = png_size(src)
        assert width > 100 and height > 100
    # every URL in the page is inline data or an in-page anchor: nothing to fetch
    assert all(u.startswith(("data:", "#")) for u in page.urls), page.urls
    table = page.tables["comparison"]
    assert [row[0] for row in table[1:]] == ["als", "als_implicit", "sgd", "global_mean (ranking: popularity)", "bias"]
    summary = io.read_json(io.output_path(cfg, "metrics", "summary.json"))
    assert table[1][1] == f"{summary['models']['als']['rmse']:.4f}"
    assert table[2][1:4] == ["–", "–", "–"]  # a ranking model has no rating metrics


def test_report_sample_lists_show_titles_escaped(published_report):
    _, result = published_report
    text = Path(result["path"]).read_text(encoding="utf-8")
    assert "Movie &lt;" in text and "Movie <" not in text  # titles are escaped
    page = parse(result["path"])
    user_tables = [
        rows
        for tid, rows in page.tables.items()
        if tid not in ("comparison", "tuning") and rows and rows[0][:2] == ["#", "highest rated in train"]
    ]
    assert len(user_tables) == 2  # report.sample_users
    assert user_tables[0][0] == [
        "#",
        "highest rated in train",
        "als top-5",
        "als_implicit top-5",
        "sgd top-5",
        "global_mean (ranking: popularity) top-5",
        "bias top-5",
    ]
    assert any("★" in cell for row in user_tables[0][1:] for cell in row)
    # every recommended film shows its train popularity in brackets
    assert all(re.search(r"\(\d+\)$", cell) for row in user_tables[0][1:] for cell in row[2:] if cell)


def test_report_with_nothing_published_says_so_per_section(spark, cfg_factory):
    cfg = cfg_factory()
    result = report.run(spark, cfg)
    page = parse(result["path"])
    assert page.sections == SECTION_IDS
    assert page.images == []
    assert {sec for sec, _ in page.notes} == set(SECTION_IDS)
    assert all(state.startswith("missing") for state in result["sections"].values())
    # re-running publishes a new version over the previous one
    again = report.run(spark, cfg)
    assert Path(again["path"]).is_file()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium_cmd(binary, profile, *args):
    return [
        binary,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing but the file:// page can load
        "--virtual-time-budget=10000",
        *args,
    ]


@pytest.mark.browser
def test_report_renders_in_headless_chromium(published_report, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    _, result = published_report
    url = Path(result["path"]).resolve().as_uri()
    n_images = len(parse(result["path"]).images)
    dom = subprocess.run(_chromium_cmd(binary, tmp_path / "profile", "--dump-dom", url), capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1)))
    assert attrs.get("data-images-total") == str(n_images)
    assert attrs.get("data-images-ok") == str(n_images)  # every image decoded in the browser
    assert 'id="comparison"' in dom.stdout and int(attrs["data-tables"]) >= 3

    shot = tmp_path / "report.png"
    run = subprocess.run(
        _chromium_cmd(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        gray = im.convert("L")
        lo, hi = gray.getextrema()
        assert hi - lo > 100  # not a blank page
        dark = gray.point(lambda v: 255 if v < 128 else 0).histogram()[255]
        assert dark > 5000  # text, tables and plots drew something
