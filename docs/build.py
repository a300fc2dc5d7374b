"""Build the documentation: the API reference from the docstrings (pdoc) and the task guides
(docs/guides/*.md, whose examples tests/test_guides.py runs), as static HTML under docs/_build/.

    python docs/build.py            # or: make docs

Any warning (a module that fails to import, a broken reference) fails the build.
"""

from __future__ import annotations

import html
import re
import shutil
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "_build"
MODULES = ["provrepair", "provrepair.solvers", "provrepair.heuristics"]
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}
pre{{background:#f4f4f4;padding:.8rem;overflow:auto}} code{{font-size:.92em}} nav a{{margin-right:1rem}}</style>
</head><body><nav><a href="{root}index.html">provrepair</a><a href="{root}api/provrepair.html">API reference</a></nav>
{body}</body></html>
"""


def guide_pages(markdown) -> list[tuple[str, str]]:
    """(file name, title) of every guide, written as HTML."""
    pages = []
    (OUT / "guides").mkdir(parents=True, exist_ok=True)
    for src in sorted((HERE / "guides").glob("*.md")):
        text = src.read_text()
        title = re.match(r"#\s*(.+)", text).group(1).strip()
        body = markdown(text, extras=["fenced-code-blocks"])
        name = src.with_suffix(".html").name
        (OUT / "guides" / name).write_text(PAGE.format(title=html.escape(title), body=body, root="../"))
        pages.append((name, title))
    return pages


def main() -> int:
    import pdoc
    import pdoc.render
    from markdown2 import markdown

    import provrepair

    for name in provrepair.__all__:  # pdoc reads a module's __dict__; resolve the lazy names first
        getattr(provrepair, name)
    if OUT.exists():
        shutil.rmtree(OUT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.render.configure(docformat="restructuredtext", search=True, show_source=False)
        pdoc.pdoc(*MODULES, output_directory=OUT / "api")
    pages = guide_pages(markdown)
    items = "\n".join(f'<li><a href="guides/{n}">{html.escape(t)}</a></li>' for n, t in pages)
    body = ("<h1>provrepair</h1><p>Repair trained neural networks and prove the repair.</p>"
            f"<h2>Guides</h2><ul>{items}</ul>"
            '<h2>Reference</h2><ul><li><a href="api/provrepair.html">provrepair</a></li>'
            '<li><a href="api/provrepair/solvers.html">provrepair.solvers</a></li><li><a href="api/provrepair/heuristics.html">provrepair.heuristics</a></li></ul>')
    (OUT / "index.html").write_text(PAGE.format(title="provrepair", body=body, root=""))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"wrote {OUT / 'index.html'} ({len(pages)} guides, API reference under {OUT / 'api'})")
    return 1 if caught else 0


if __name__ == "__main__":
    sys.exit(main())
