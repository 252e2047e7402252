"""The documentation builds in strict mode, lists every page, renders the
docstrings' Sphinx markup and has every public class and function on the API page."""

import importlib
import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Modules whose ``__all__`` classes and functions must be on the API page.
PUBLIC_MODULES = (
    "captum_similarity",
    "captum_similarity.figures",
    "captum_similarity.metrics",
    "captum_similarity.models",
    "captum_similarity.data",
    "captum_similarity.training",
    "captum_similarity.explainers",
    "captum_similarity.lrp",
    "captum_similarity.report",
    "captum_similarity.cli",
    "captum_similarity.models.loading",
    "captum_similarity.data.files",
)
#: Sphinx markup that must not reach the built site.
RAW_MARKUP = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc):[`<]|Examples?::")


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    missing = [p for p in pages if f": {p}" not in nav]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built in strict mode (fails the test on any warning)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    if shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists():
        pytest.skip("mkdocs command not found")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_docs_build_strict(site):
    assert (site / "index.html").is_file() and (site / "api" / "index.html").is_file()
    assert not (site / "hooks").exists()  # the build hook is not published


def test_no_raw_sphinx_markup_in_the_site(site):
    found = {}
    for page in site.rglob("*.html"):
        hits = RAW_MARKUP.findall(page.read_text(encoding="utf-8"))
        if hits:
            found[str(page.relative_to(site))] = sorted(set(hits))
    assert not found, f"raw Sphinx roles or Example:: in the built site: {found}"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    # the roles became code spans, linked where the page documents the target
    assert '<a href="#captum_similarity.head.SimilarityHead"><code>SimilarityHead</code></a>' in api
    assert "<p><strong>Example</strong></p>" in api


def test_the_hook_converts_roles_and_examples():
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        from sphinx_roles import convert
    finally:
        sys.path.remove(str(ROOT / "docs" / "hooks"))
    page = (
        '<h2 id="pkg.mod.Thing">Thing</h2><p>See :class:<code>~pkg.Thing</code>, '
        ":func:<code>pkg.other.helper()</code> and :meth:<code>~pkg.mod.Thing.run</code>.</p>"
        "<p>Example::</p><pre><code>&gt;&gt;&gt; x</code></pre><p>As follows::</p>"
    )
    out = convert(page)
    assert '<a href="#pkg.mod.Thing"><code>Thing</code></a>' in out  # re-exported path resolved
    assert "<code>pkg.other.helper()</code>" in out and "href=\"#pkg.other" not in out
    assert "<code>run</code>" in out
    assert "<p><strong>Example</strong></p><pre>" in out and "As follows:</p>" in out
    assert not RAW_MARKUP.search(out)


def test_every_public_class_and_function_is_on_the_api_page(site):
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    ids = set(re.findall(r'id="(captum_similarity[\w.]*)"', api))
    names = {i.rsplit(".", 1)[-1] for i in ids}
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and name not in names:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public classes and functions missing from docs/api.md: {missing}"
