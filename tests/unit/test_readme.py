"""The README and the manual under docs/ stay true.

- the configuration tables in docs/configuration.md are the ones generated from the settings;
- the README keeps the two commands, and stays a front page that leads to every manual page;
- every relative link (and its #anchor) in README.md and docs/*.md leads somewhere;
- what users read speaks of the service, not of the project's issue numbers;
- docs/layout.md names every Python module of the service's packages, and only existing files.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from kafka_common.settings import markdown_table
from stream_app.settings import WorkerSettings
from tests.conftest import ROOT
from trainer.settings import TrainerSettings

README = ROOT / "README.md"
DOCS = ROOT / "docs"
LAYOUT = DOCS / "layout.md"
# The packages whose modules docs/layout.md lists; one that does not exist (yet) is skipped, and
# any other top-level package found on disk is added (see _packages).
PACKAGES = (
    "mixture",
    "stream_app",
    "trainer",
    "kafka_common",
    "wire",
    "producer",
    "support",
    "bench",
)
NOT_PACKAGES = {"tests", "docs", "deploy"}


def _pages() -> list[pathlib.Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where a link is no link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


# ---------------------------------------------------------------- generated configuration tables


@pytest.mark.parametrize(
    ("settings", "module"),
    [(WorkerSettings, "stream_app.settings"), (TrainerSettings, "trainer.settings")],
)
def test_configuration_tables_are_current(settings, module):
    page = (DOCS / "configuration.md").read_text()
    assert markdown_table(settings) in page, (
        f"regenerate the table in docs/configuration.md: python -m {module} --markdown"
    )


# ------------------------------------------------------------------------------ the front page


def test_readme_keeps_the_two_commands():
    readme = README.read_text()
    assert "## The two commands" in readme
    demo = "make demo    # venv, Kafka, a first model, worker, 20,000 points, a refit, trainer job"
    test = "make test    # venv, Kafka, the whole suite (unit + integration against the real"
    assert f"```sh\n{demo}, Prometheus\n{test} broker)\n```" in readme
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "demo-down", "kafka-down", "test-quick", "test-unit"):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
        assert f"make {target}" in readme, target


def test_readme_is_a_front_page_that_leads_to_every_manual_page():
    readme = README.read_text()
    assert len(readme.splitlines()) <= 250, "the README is the front page: move detail to docs/"
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", readme))
    pages = {p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md")}
    assert pages - linked == set(), "every page of docs/ is linked from the README"


# ---------------------------------------------------------------------------------- the links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = _slug(heading)
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(page: pathlib.Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))


def test_slugs_follow_github():
    assert _slug("Delivery: at least once") == "delivery-at-least-once"
    assert (
        _slug("The dashboard (`deploy/grafana/dashboards/gmm-stream.json`)")
        == "the-dashboard-deploygrafanadashboardsgmm-streamjson"
    )


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_leads_somewhere(page):
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto: ...
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target}")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading with anchor #{anchor} in {target.name}")
    assert broken == [], f"{page.name}: " + "; ".join(broken)


# ------------------------------------------------------------------- what users read, not issues


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_issue_numbers_or_status_notes(page):
    text = re.sub(r"\]\([^)]*\)", "]()", page.read_text())  # link targets may be issue URLs
    found = re.findall(r"\bissues? \d+|(?<![\w/])#\d+|\bin progress\b|^Status:", text, re.I | re.M)
    assert found == [], f"{page.name} speaks in issue numbers or status notes: {found}"


# ------------------------------------------------------------------------------------ the layout


def _packages() -> list[str]:
    found = {
        p.parent.name
        for p in ROOT.glob("*/__init__.py")
        if not p.parent.name.startswith(".") and p.parent.name not in NOT_PACKAGES
    }
    return sorted({p for p in PACKAGES if (ROOT / p).is_dir()} | found)


def _modules_on_disk() -> tuple[set[str], set[str]]:
    """Every module file (`__init__.py` aside) and every package directory, relative to ROOT."""
    modules, packages = set(), set()
    for package in _packages():
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            if path.name == "__init__.py":
                packages.add(rel.parent.as_posix() + "/")
            else:
                modules.add(rel.as_posix())
        packages.add(f"{package}/")
    return modules, packages


def _layout_rows() -> list[str]:
    return re.findall(r"^\| `([^`]+)` \|", LAYOUT.read_text(), re.M)


def test_layout_rows_are_one_path_each():
    rows = _layout_rows()
    assert len(rows) == len(set(rows)), "a path has two rows in docs/layout.md"
    assert "mixture/" in rows and "mixture/model.py" in rows  # the format the test reads


def test_layout_names_every_module():
    modules, packages = _modules_on_disk()
    listed = set(_layout_rows())
    missing = sorted((modules | packages) - listed)
    assert missing == [], (
        "docs/layout.md has no row for these (add `| `path` | what it holds |` to its table): "
        + ", ".join(missing)
    )


def test_layout_names_only_existing_files():
    gone = [row for row in _layout_rows() if not (ROOT / row.rstrip("/")).exists()]
    assert gone == [], "docs/layout.md names paths that do not exist: " + ", ".join(gone)
