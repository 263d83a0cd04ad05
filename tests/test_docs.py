"""The documentation's links and the README's size, checked fast and without mkdocs.

README.md is the pitch, the quickstart and the tour; docs/ holds one page per topic and is built by MkDocs
(`mkdocs build --strict` in .ci/run, which also catches broken links inside docs/). These tests check what that
build cannot see: the README's links (GitHub renders them, so they must name files that exist, and headings that
exist), its size, and that every page has a way in from the README.
"""

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 15 * 1024  # bytes: the README stays the pitch; the rest belongs in docs/

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def markdown_files():
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text):
    """The text without fenced code blocks and inline code, where a bracket is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading):
    """A heading's anchor as GitHub makes it (and, for these headings, MkDocs' toc extension too)."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = unicodedata.normalize("NFKD", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    return {slug(h) for h in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8")))}


def links(path):
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: are not checked
            yield target


def test_readme_is_at_most_15_kb():
    size = README.stat().st_size
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes, over {README_LIMIT}: move the detail into a page under docs/ and link it"
    )


def test_relative_links_point_to_existing_files_and_headings():
    broken = []
    for path in markdown_files():
        for target in links(path):
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            shown = f"{path.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{shown}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{shown}: no heading with the anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link (add them to its Documentation table): {missing}"


def test_docs_home_shows_the_readme_quickstart_commands():
    def commands(text):
        return re.findall(r"```bash\n(.*?)```", text, re.S)

    quickstart = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert commands(quickstart) == commands((DOCS / "index.md").read_text(encoding="utf-8"))[:2]
