"""The manual stays navigable: the configuration page is the schema's, every relative link and
picture in README.md and docs/ exists (anchors included), and the README indexes every page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from blkassist.docs import configuration

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def resolves(page: Path, target: str) -> bool:
    if re.match(r"[a-z]+:", target):
        return True  # http(s), mailto: not checked offline
    path, _, anchor = target.partition("#")
    linked = (page.parent / path).resolve() if path else page
    if not linked.exists():
        return False
    return not anchor or linked.suffix != ".md" or anchor in anchors(linked)


def test_configuration_page_is_the_schemas():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == configuration.render(), (
        f"docs/configuration.md differs from config/schema.yaml: run "
        f".venv/bin/{configuration.COMMAND}"
    )


def test_configuration_page_lists_every_key():
    # A key the walker missed would vanish from the page and the comparison above alike.
    page = (REPO / "docs" / "configuration.md").read_text()
    for path in (
        "murals.NAME.refine.qa.fidelity",
        "murals.NAME.refine.reroll[].box",
        "esrgan.NAME.degradation.jpeg_range2",
        "conceptor.runs.NAME.recipe.keep",  # from the shared $defs/flux_recipe
        "stencil.runs.NAME.curriculum.pairs_from",
        "compositions.NAME.elements[].opacity",
        "licences.files.NAME",
    ):
        assert f"| `{path}` |" in page, path
    # An assistant's recipe default wins over the shared recipe's (as the loader fills them).
    rows = {line.split(" | ")[0]: line for line in page.splitlines() if line.startswith("| `")}
    assert '`"prodigy"`' in rows["| `conceptor.runs.NAME.recipe.optimizer`"]
    assert '`"adamw8bit"`' in rows["| `texture.runs.NAME.recipe.optimizer`"]
    assert "`10000`" in rows["| `texture.runs.NAME.recipe.steps`"]
    assert "`4.0` (without target_long_side)" in rows["| `murals.NAME.scale`"]


@pytest.mark.parametrize("page", [REPO / "README.md", *PAGES], ids=lambda p: p.name)
def test_relative_links_and_pictures_exist(page):
    broken = [t for t in LINK.findall(prose(page.read_text())) if not resolves(page, t)]
    assert not broken, f"{page.relative_to(REPO)}: broken links {broken}"


def test_readme_indexes_every_docs_page_and_stays_short():
    readme = (REPO / "README.md").read_text()
    targets = {t.partition("#")[0] for t in LINK.findall(prose(readme))}
    missing = [p.name for p in PAGES if f"docs/{p.name}" not in targets]
    assert not missing, f"README.md links no docs page {missing}"
    assert len(readme.splitlines()) < 200, "README.md is the front page: details go to docs/"


def test_readme_keeps_the_two_commands():
    # .ci/run runs `make test`; a newcomer starts from `make demo`.
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^make demo\b", readme, flags=re.M)
    assert re.search(r"^make test\b", readme, flags=re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()
