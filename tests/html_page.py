"""A parsed HTML page for the tests that read Data Docs: its elements, visible text and scripts."""

from __future__ import annotations

from html.parser import HTMLParser


class Page(HTMLParser):
    """A page's elements (tag, attributes), its visible text and the bodies of its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.scripts: list[str] = []
        self._script = False

    def handle_starttag(self, tag, attrs) -> None:
        self.elements.append((tag, dict(attrs)))
        self._script = tag == "script"
        if self._script:
            self.scripts.append("")

    def handle_endtag(self, tag) -> None:
        self._script = self._script and tag != "script"

    def handle_data(self, data) -> None:
        if self._script:
            self.scripts[-1] += data
        else:
            self.text.append(data)

    def visible(self) -> str:
        """The visible text, whitespace collapsed."""
        return " ".join(" ".join(self.text).split())


def parse_html(html: str) -> Page:
    """``html`` parsed into a :class:`Page`."""
    page = Page()
    page.feed(html)
    page.close()
    return page
