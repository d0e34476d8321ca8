"""Small HTML building blocks for the report: every string is escaped unless it is ``Html``
(already built from escaped parts), so a label or config value from a run can never add markup."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence

NOT_RECORDED = "not recorded"


class Html(str):
    """Markup that is already safe: built here from escaped parts."""


def esc(value: object) -> Html:
    """``value`` as text inside HTML (quotes escaped too, so it is safe in attributes)."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(parts: Iterable[object], sep: str = "") -> Html:
    return Html(esc(sep).join(esc(p) for p in parts))


def el(tag: str, *content: object, **attrs: object) -> Html:
    """``<tag attrs>content</tag>``; ``class_`` stands for ``class``; None attributes are left
    out."""
    attributes = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"'
                         for k, v in attrs.items() if v is not None)
    return Html(f"<{tag}{attributes}>{join(content)}</{tag}>")


def code(text: object) -> Html:
    return el("code", text)


def note(*content: object) -> Html:
    return el("p", *content, class_="note")


def not_run(stage: str, command: str) -> Html:
    """What a section says when its stage has not run: the command that runs it."""
    return note(f"{stage} not run yet: run ", code(command))


def badge(passed: bool, text: str | None = None) -> Html:
    return el("span", text or ("pass" if passed else "FAIL"), class_="pass" if passed else "fail")


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], class_: str = "") -> Html:
    """A table; numbers are right-aligned by the stylesheet (cells of class ``num``)."""
    head = el("tr", *(el("th", h) for h in headers))
    body = [el("tr", *(_cell(v) for v in row)) for row in rows]
    return el("table", el("thead", head), el("tbody", *body), class_=class_ or None)


def _cell(value: object) -> Html:
    numeric = isinstance(value, (int, float)) or (isinstance(value, str) and _looks_numeric(value))
    return el("td", value, class_="num" if numeric else None)


def _looks_numeric(text: str) -> bool:
    stripped = text.replace(",", "").replace("%", "").replace(" ms", "").removesuffix("x")
    try:
        float(stripped)
    except ValueError:
        return False
    return True


def definitions(pairs: Iterable[tuple[object, object]]) -> Html:
    """A two-column key/value table."""
    return el("table", el("tbody", *(el("tr", el("th", k), el("td", v)) for k, v in pairs)),
              class_="pairs")


def image(png: bytes, alt: str) -> Html:
    """An embedded PNG: the page needs no other file and no network."""
    data = base64.b64encode(png).decode("ascii")
    return Html(f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">')


def commands(lines: Iterable[str]) -> Html:
    return el("pre", el("code", "\n".join(lines)))


def section(id_: str, title: str, *content: object) -> Html:
    return el("section", el("h2", title), *content, id=id_)


def number(value: object, spec: str = ".4f", missing: str = NOT_RECORDED) -> str:
    """``value`` formatted by ``spec``, or ``missing`` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return missing
    return format(value, spec)


def size(num_bytes: object) -> str:
    """A file size in kB/MB/GB."""
    if not isinstance(num_bytes, int):
        return NOT_RECORDED
    value, unit = float(num_bytes), "B"
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


STYLE = """
:root { --fg: #1d2327; --muted: #5f6b73; --line: #d9dee2; --bg: #f6f8f9; --accent: #2b6cb0; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
header { background: var(--bg); border-bottom: 1px solid var(--line); padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 24px; }
header p { margin: 0; color: var(--muted); }
nav { padding: 8px 32px; border-bottom: 1px solid var(--line); position: sticky; top: 0;
      background: #fff; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; }
main { max-width: 1180px; padding: 0 32px 48px; }
section { padding-top: 12px; border-bottom: 1px solid var(--line); padding-bottom: 16px; }
h2 { font-size: 20px; margin: 16px 0 8px; }
h3 { font-size: 16px; margin: 16px 0 6px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: var(--bg); }
table.pairs th { background: var(--bg); font-weight: 600; white-space: nowrap; }
td:first-child { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.default { color: var(--muted); }
.pass { color: #17692f; font-weight: 600; }
.fail { color: #b42318; font-weight: 600; }
.todo { color: var(--muted); }
.note { color: var(--muted); font-style: italic; }
.problems { color: #b42318; }
code { font: 13px ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
       background: var(--bg); padding: 1px 4px; border-radius: 3px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 10px 14px; overflow-x: auto; }
pre code { background: none; padding: 0; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
.figures img { max-width: 540px; margin: 0; }
"""


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, Html]]) -> str:
    """The whole document: inline stylesheet, a table of contents, the sections; no script."""
    nav = el("nav", *(el("a", name, href=f"#{id_}") for id_, name, _ in sections))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request, not even to a local file
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        el("header", el("h1", title), el("p", subtitle)), nav,
        el("main", *(section(id_, name, body) for id_, name, body in sections)),
        "</body></html>", ""])
