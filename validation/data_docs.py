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

The status a page shows is the platform's decision on the batch, not GX's. A GX validation
result is "Failed" whenever any expectation fails, whatever its ``severity`` (in GX 1.24 the
severity only steers the notification actions, ``get_max_severity_failure``): a batch accepted
with a drift warning (warning severity) and a partial batch (some rows quarantined, the rest
accepted) were shown as "Failed" like a quarantined one. The decision is known only after GX ran
(:func:`validation.validate.validate_batch` routes the rows from the results), so
:func:`record_decision` writes it into the stored result's ``meta["decision"]`` and builds the
batch's page and the index again; :class:`DecisionValidationResultsPageRenderer` (the page's
Overview) and :class:`DecisionSiteIndexBuilder` / :class:`DecisionSiteIndexPageRenderer` (the
index's Status column and its filter) show it. A result without a decision (validated before
this, or stopped by an error after GX ran) keeps GX's Succeeded/Failed.

GX's navigation bar loads its logo from an S3 bucket on the internet, although the site holds
the same image under ``static/images/``: :class:`_LocalImagesLoader` serves the bar's template
without that address, so every page shows the local copy (and loads nothing from outside once
the Airflow plugin has rewritten the CDN scripts and styles, ``plugins/data_docs_assets.py``).

:func:`data_docs_site` is the site configuration that selects these views and renderers;
:func:`validation.checkpoint.open_context` writes it into the GX project.
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any

from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier
from great_expectations.render.renderer.site_builder import DefaultSiteIndexBuilder
from jinja2 import BaseLoader, ChoiceLoader, PackageLoader, TemplateNotFound, pass_context

from validation.gx_setup import gx

logger = logging.getLogger(__name__)

RenderedComponentContent = gx.render.RenderedComponentContent
RenderedStringTemplateContent = gx.render.RenderedStringTemplateContent
DefaultJinjaPageView = gx.render.view.DefaultJinjaPageView
DefaultJinjaIndexPageView = gx.render.view.DefaultJinjaIndexPageView
SiteIndexPageRenderer = gx.render.renderer.SiteIndexPageRenderer
ValidationResultsPageRenderer = gx.render.renderer.ValidationResultsPageRenderer

SITE_NAME = "local_site"
SITE_DIR = "uncommitted/data_docs/local_site/"
"""GX's default site: its name and folder below the project's ``gx/`` (unchanged here)."""


def _is_block(value: Any) -> bool:
    return isinstance(value, RenderedComponentContent) or (
        isinstance(value, dict) and "content_block_type" in value)


def _escape(value: Any) -> Any:
    return html.escape(value) if isinstance(value, str) else value


NAVBAR = "top_navbar.j2"
_REMOTE_IMAGES = re.compile(r'\{%-?\s*set\s+static_images_dir\s*=\s*"https?://[^"]*"\s*-?%\}')
_LOCAL_IMAGES = ('{% if static_images_dir is not defined %}'
                 '{% set static_images_dir = "static/images/" %}{% endif %}')
"""GX's navigation bar sets ``static_images_dir`` to the site's ``static/images/`` (relative to
the page), then, on every page, to an S3 address. That second ``set`` is replaced by a fallback
for the index (the one page the bar sets no folder for), so each page's logo is the site's."""


class _LocalImagesLoader(BaseLoader):
    """GX's ``top_navbar.j2`` without the internet address of its images (the logo)."""

    def __init__(self) -> None:
        self._gx = PackageLoader("great_expectations", "render/view/templates")

    def get_source(self, environment, template):
        if template != NAVBAR:
            raise TemplateNotFound(template)
        source, filename, uptodate = self._gx.get_source(environment, template)
        local, found = _REMOTE_IMAGES.subn(_LOCAL_IMAGES, source)
        if not found:  # a GX release without the override: its own template is fine as it is
            logger.debug("%s sets no remote image folder; used as it is", NAVBAR)
        return local, filename, uptodate


class _EscapingView:
    """Mixin for GX's Jinja views: plain strings are text, escaped as they become HTML; images
    from the site, never from the internet (:class:`_LocalImagesLoader`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.env.loader = ChoiceLoader([_LocalImagesLoader(), self.env.loader])

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


DECISION = "decision"
"""Key of the platform's decision in a stored validation result's ``meta``: ``{"status":
"accepted" | "partial" | "quarantined", "note": <one line>, "warnings": <count>}``
(:func:`record_decision`)."""

_ICONS = {
    "accepted": ("fa-check-circle", "text-success"),
    "partial": ("fa-adjust", "text-warning"),
    "quarantined": ("fa-times", "text-danger"),
}
"""Font Awesome icon and Bootstrap colour of each status (GX's own for success and failure)."""
_WARNED = ("fa-exclamation-triangle", "text-warning")


def _decision_of(meta: Any) -> dict | None:
    """The recorded decision in a result's ``meta``, or ``None`` (none recorded)."""
    decision = meta.get(DECISION) if isinstance(meta, dict) else None
    return decision if isinstance(decision, dict) and decision.get("status") in _ICONS else None


def _icon_classes(decision: dict) -> list[str]:
    icon = _WARNED if decision["status"] == "accepted" and decision.get("warnings") else \
        _ICONS[decision["status"]]
    return ["fas", *icon, f"lcp-{decision['status']}-icon"]


class DecisionValidationResultsPageRenderer(ValidationResultsPageRenderer):
    """GX's validation page, whose Overview says the platform's decision on the batch
    (``Status: accepted - 2 warning(s): label_drift, price_drift``) when one is recorded."""

    @classmethod
    def _render_validation_header(cls, validation_results):
        header = super()._render_validation_header(validation_results)
        decision = _decision_of(validation_results.meta)
        if decision is not None:
            params = header.subheader.string_template["params"]
            note = f" - {decision['note']}" if decision.get("note") else ""
            params["success"] = f"{decision['status']}{note}"
            # a trusted GX parameter (raw HTML): built here from fixed classes only
            params["html_success_icon"] = (
                f'<i class="{" ".join(_icon_classes(decision))}" aria-hidden="true"></i>')
        return header


class DecisionSiteIndexPageRenderer(SiteIndexPageRenderer):
    """GX's index page, whose Status column (and its filter) shows the platform's decision of
    each validation result that has one (put in its link by :class:`DecisionSiteIndexBuilder`)."""

    @classmethod
    def _generate_validation_results_link_table(cls, index_links_dict):
        table = super()._generate_validation_results_link_table(index_links_dict)
        links = index_links_dict.get("validations_links", [])
        for row, link in zip(table.table_data, links, strict=True):  # GX keeps the links' order
            decision = link.get(DECISION)
            if decision is None:
                continue
            cell = {
                "template": "$icon $status",
                "params": {"icon": "", "status": decision["status"]},
                "styling": {"params": {"icon": {"tag": "i", "classes": _icon_classes(decision)}},
                            "classes": ["ge-index-page-table-validation-links-item"]},
            }
            if decision.get("note"):  # GX prints a tooltip's content as HTML
                cell["tooltip"] = {"content": html.escape(decision["note"])}
            row["validation_success"] = RenderedStringTemplateContent(
                content_block_type="string_template", string_template=cell)
            row["_validation_success_text"] = decision["status"]
        return table


class DecisionSiteIndexBuilder(DefaultSiteIndexBuilder):
    """GX's index builder; each validation link also carries the result's recorded decision."""

    def _add_validations_to_index_links(self, index_links_dict, site_keys) -> None:
        super()._add_validations_to_index_links(index_links_dict, site_keys)
        store = self.source_stores.get("validations")
        for link in index_links_dict.get("validations_links", []):
            # GX passes the builder only the result's success; read its meta here
            result = self.data_context.get_validation_result(
                batch_identifier=link["batch_identifier"],
                expectation_suite_name=link["expectation_suite_name"],
                run_id=link["run_id"], validation_results_store_name=store)
            link[DECISION] = _decision_of(getattr(result, "meta", None))


def _note(report) -> str:
    """One line on the decision: warnings of an accepted batch, counts of a partial one, the
    reason codes of a quarantined one."""
    codes = ", ".join(dict.fromkeys(w.split(":", 1)[0] for w in report.warnings))
    warned = f"{len(report.warnings)} warning(s): {codes}" if report.warnings else ""
    if report.status == "accepted":
        return warned
    if report.status == "partial":
        counts = (f"{report.rejected_rows} of {report.rows} rows quarantined "
                  f"({', '.join(report.reasons)}), {report.accepted_rows} accepted")
        return f"{counts}; {warned}" if warned else counts
    reasons = ", ".join(dict.fromkeys(r.split(":", 1)[0] for r in report.batch_reasons))
    return f"whole batch quarantined ({reasons})" if reasons else "whole batch quarantined"


def record_decision(gx_dir: Path, report) -> None:
    """Writes the platform's decision on a batch into its GX validation result and builds the
    batch's Data Docs page and the index again, so both show it.

    Called once the decision is final (after the batch's rows are routed and written). The
    result's ``meta["decision"]`` (:data:`DECISION`) gets ``{"status", "note", "warnings"}``;
    re-validating the batch replaces the result, and this records the new decision.

    Args:
        gx_dir: the GX project root (as given to :func:`validation.checkpoint.run_checkpoint`).
        report: the batch's :class:`common.results.BatchReport` (``validation_id``, ``status``,
            counts, ``reasons``, ``batch_reasons``, ``warnings``). Nothing is done when it has no
            ``validation_id`` (GX did not run).

    Raises:
        KeyError: the project holds no result under ``report.validation_id``.
    """
    if not report.validation_id:
        return
    import validation.expectations  # noqa: F401  (the result holds its expectation types)
    from validation.checkpoint import open_context  # it imports this module

    context = open_context(Path(gx_dir))
    key = ValidationResultIdentifier.from_tuple(tuple(report.validation_id.split("/")))
    store = context.validation_results_store
    result = store.get(key)
    result.meta[DECISION] = {"status": report.status, "note": _note(report),
                             "warnings": len(report.warnings)}
    store.set(key, result)
    context.build_data_docs(resource_identifiers=[key])
    logger.debug("batch %s: decision %s recorded in its GX result", report.batch_id, report.status)


def data_docs_site() -> dict:
    """The ``data_docs_sites`` entry of the GX project: GX's local site, rendered by the views,
    renderers and index builder of this module.

    Returns:
        ``{SITE_NAME: {...}}``, for ``context.variables.data_docs_sites``.
    """
    page_view = {"module_name": __name__, "class_name": EscapingPageView.__name__}
    sections = {section: {"view": page_view}
                for section in ("expectations", "validations", "profiling")}
    sections["validations"]["renderer"] = {
        "module_name": __name__, "class_name": DecisionValidationResultsPageRenderer.__name__}
    return {SITE_NAME: {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": True,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": SITE_DIR},
        "site_index_builder": {
            "module_name": __name__, "class_name": DecisionSiteIndexBuilder.__name__,
            "renderer": {"module_name": __name__,
                         "class_name": DecisionSiteIndexPageRenderer.__name__},
            "view": {"module_name": __name__, "class_name": EscapingIndexPageView.__name__}},
        "site_section_builders": sections,
    }}
