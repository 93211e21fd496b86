"""A small element tree built with the stdlib's html.parser, to assert on pages by
structure (rows, cells, links) rather than by substrings."""

from __future__ import annotations

from html.parser import HTMLParser

from fastapi.testclient import TestClient

VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                  "source", "track", "wbr"})


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None) -> None:
        self.tag = tag
        self.attrs = attrs
        self.parent = parent
        self.children: list[Element | str] = []

    def __repr__(self) -> str:
        return f"<{self.tag} {self.attrs}>"

    def text(self) -> str:
        """The text inside, with runs of whitespace collapsed to one space."""
        return " ".join(self._raw_text().split())

    def _raw_text(self) -> str:
        return "".join(c if isinstance(c, str) else c._raw_text() for c in self.children)

    def raw_text(self) -> str:
        """The text inside exactly as written (for <pre>)."""
        return self._raw_text()

    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def iter(self) -> list[Element]:
        found = []
        for child in self.children:
            if isinstance(child, Element):
                found.append(child)
                found.extend(child.iter())
        return found

    def find_all(self, tag: str | None = None, *, class_: str | None = None,
                 children_only: bool = False, **attrs: str) -> list[Element]:
        """Descendants matching `tag`, a class and attributes (data_run= means data-run=)."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        pool = self.iter()
        if children_only:
            pool = [c for c in self.children if isinstance(c, Element)]
        return [e for e in pool
                if (tag is None or e.tag == tag)
                and (class_ is None or class_ in e.classes())
                and all(e.attrs.get(name) == value for name, value in wanted.items())]

    def find(self, tag: str | None = None, *, class_: str | None = None,
             children_only: bool = False, **attrs: str) -> Element:
        """The one element find_all would give; fails if there is none or more than one."""
        found = self.find_all(tag, class_=class_, children_only=children_only, **attrs)
        assert len(found) == 1, f"expected one {tag} .{class_} {attrs}, found {len(found)}: {found}"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs}, self.current)
        self.current.children.append(element)
        if tag not in VOID:
            self.current = element

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(
            Element(tag, {name: value or "" for name, value in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.current.tag == tag, f"</{tag}> closes <{self.current.tag}>"
        assert self.current.parent is not None
        self.current = self.current.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse(html: str) -> Element:
    """The document's tree; fails on a mismatched or unclosed tag."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    assert builder.current is builder.root, f"<{builder.current.tag}> is never closed"
    return builder.root


def fetch(client: TestClient, url: str, *, status: int = 200) -> Element:
    """GET `url` as a browser would and parse the page; fails on another status."""
    response = client.get(url)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return parse(response.text)


def cells(row: Element) -> list[str]:
    """The text of a row's cells (th and td), left to right."""
    return [cell.text() for cell in row.find_all(children_only=True) if cell.tag in ("th", "td")]


def form_token(client: TestClient, url: str) -> str:
    """The CSRF token of the page at `url` (fetching it also sets the browser's cookie); every
    form of a page carries the same one."""
    tokens = {field.attrs["value"] for field in fetch(client, url).find_all("input", name="csrf_token")}
    assert len(tokens) == 1, tokens
    return tokens.pop()
