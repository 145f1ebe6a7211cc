"""Data Docs views that HTML-escape every value a page prints (the pages are safe to open).

GX 1.x renders Data Docs with Jinja templates whose names end in ``.j2``, so its
``select_autoescape(["html", "xml"])`` never turns autoescaping on. GX escapes the parameters of
its string templates (the expectation sentences) but prints everything else as it is: table
cells such as the unexpected values of a failed expectation (titles, ids, categories from the
feed), the run name (the batch id) in the Info table, the page title and breadcrumb, and the
cells of the index page's table (which bootstrap-table inserts as HTML). A listing titled
``<script>...</script>`` would then run in the reviewer's browser.

The views below fix this where the page is rendered, for values we do not foresee as well:

- a content block that is a plain string (or a plain element of a list of blocks) is data, never
  GX markup (GX builds its markup as typed content blocks: string templates, tables, ...), so it
  is escaped (``html.escape``, quotes included);
- the document's top-level strings (``page_title``, ...) and section names, which the templates
  print directly, are escaped;
- the index table's private fields (``_..._sort``, ``_table_row_link_path``), which GX puts in
  the page's ``<script>`` unrendered, are escaped too.

Escaping happens once, where the value turns into HTML, so nothing is escaped twice and what
the checks saw (the validated frame, the stored validation result) is unchanged.
:func:`data_docs_site` is the site configuration that selects these views;
:func:`validation.checkpoint.open_context` writes it into the GX project.
"""

from __future__ import annotations

import html
from typing import Any

from jinja2 import pass_context

from validation.gx_setup import gx

RenderedComponentContent = gx.render.RenderedComponentContent
DefaultJinjaPageView = gx.render.view.DefaultJinjaPageView
DefaultJinjaIndexPageView = gx.render.view.DefaultJinjaIndexPageView

SITE_NAME = "local_site"
SITE_DIR = "uncommitted/data_docs/local_site/"
"""GX's default site: its name and folder below the project's ``gx/`` (unchanged here)."""


def _is_block(value: Any) -> bool:
    return isinstance(value, RenderedComponentContent) or (
        isinstance(value, dict) and "content_block_type" in value)


def _escape(value: Any) -> Any:
    return html.escape(value) if isinstance(value, str) else value


class _EscapingView:
    """Mixin for GX's Jinja views: plain strings are text, escaped as they become HTML."""

    def render(self, document, template=None, **kwargs):
        self._validate_document(document)
        if hasattr(document, "to_json_dict"):
            document = document.to_json_dict()
        # top-level strings are printed by the page templates directly (title, breadcrumb)
        document = {key: _escape(value) for key, value in document.items()}
        document["sections"] = [
            {**section, "section_name": _escape(section.get("section_name"))}
            if isinstance(section, dict) else section
            for section in document.get("sections") or []]
        # the parent's render validates the document type, which is now a dict
        template = self._get_template(template or self._template)
        return template.render(document, **kwargs)

    @pass_context
    def render_content_block(self, jinja_context, content_block, index=None,
                             content_block_id=None, render_to_markdown=False):
        if isinstance(content_block, str):
            return html.escape(content_block)
        if isinstance(content_block, list):
            content_block = [item if _is_block(item) else html.escape(str(item))
                             for item in content_block]
        return super().render_content_block(jinja_context, content_block, index,
                                            content_block_id, render_to_markdown)

    def render_dict_values(self, context, dict_, index=None, content_block_id=None) -> None:
        for key, value in dict_.items():
            dict_[key] = (_escape(value) if key.startswith("_") else
                          self.render_content_block(context, value, index, content_block_id))


class EscapingPageView(_EscapingView, DefaultJinjaPageView):
    """GX's page view (validation results, expectation suites, profiling) with escaped values."""


class EscapingIndexPageView(_EscapingView, DefaultJinjaIndexPageView):
    """GX's index page view with escaped values (run names, asset names in its table)."""


def data_docs_site() -> dict:
    """The ``data_docs_sites`` entry of the GX project: GX's local site, rendered by the views
    of this module.

    Returns:
        ``{SITE_NAME: {...}}``, for ``context.variables.data_docs_sites``.
    """
    page_view = {"module_name": __name__, "class_name": EscapingPageView.__name__}
    return {SITE_NAME: {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": True,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": SITE_DIR},
        "site_index_builder": {
            "class_name": "DefaultSiteIndexBuilder",
            "view": {"module_name": __name__, "class_name": EscapingIndexPageView.__name__}},
        "site_section_builders": {section: {"view": page_view}
                                  for section in ("expectations", "validations", "profiling")},
    }}
