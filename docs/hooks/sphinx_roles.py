"""MkDocs hook: renders the Sphinx markup of docstrings (Captum's docstring form).

The library's docstrings follow Captum's: cross-references written as Sphinx
roles (``:class:`~captum_similarity.SiameseSimilarity```, ``:func:``,
``:meth:``, ...) and examples introduced by ``Example::``. mkdocstrings renders
docstrings as Markdown, where that markup would show raw. This hook rewrites
the rendered HTML of each page: a role becomes a code span (the last name
only with ``~``, as Sphinx shows it), linked to the object's entry when the
page documents it; ``Example::`` and ``Examples::`` become a bold heading of
the code block that follows.
"""

from __future__ import annotations

import html
import re

#: A role as Markdown leaves it: ``:class:<code>~a.b.C</code>``.
ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const|func|ref|any):<code>(~?)([^<]+?)</code>"
)
#: ``Example::`` alone in a paragraph (the literal block follows as <pre>).
EXAMPLE = re.compile(r"<p>(Examples?)::</p>")
#: The same at the end of a paragraph: ``... as follows::``.
TRAILING = re.compile(r"(\S)::</p>")


def _anchor(target: str, ids: set) -> str:
    """The id of the page's entry for ``target`` (a dotted path, maybe of a
    module the object is re-exported from), or ""."""
    if target in ids:
        return target
    name = target.rsplit(".", 2)
    for k in (2, 1):  # Class.method, then the bare name, re-exported anywhere
        tail = "." + ".".join(name[-k:])
        found = [i for i in ids if i.endswith(tail)]
        if len(found) == 1:
            return found[0]
    return ""


def convert(page_html: str) -> str:
    """The page's HTML with the roles and ``Example::`` rendered."""
    ids = set(re.findall(r'id="([A-Za-z_][\w.]*)"', page_html))

    def role(match: re.Match) -> str:
        tilde, raw = match.group(1), html.unescape(match.group(2)).strip()
        target = raw.rstrip("()")
        shown = target.rsplit(".", 1)[-1] if tilde else target
        shown += "()" if raw.endswith("()") else ""
        anchor = _anchor(target, ids)
        code = f"<code>{html.escape(shown)}</code>"
        return f'<a href="#{anchor}">{code}</a>' if anchor else code

    page_html = ROLE.sub(role, page_html)
    page_html = EXAMPLE.sub(lambda m: f"<p><strong>{m.group(1)}</strong></p>", page_html)
    return TRAILING.sub(r"\1:</p>", page_html)


def on_page_content(html_text: str, page, config, files) -> str:  # noqa: D401 (MkDocs hook)
    return convert(html_text)
