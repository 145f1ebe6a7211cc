"""Validation step: a catalog batch -> GX checkpoint -> accepted rows to the listings store,
rejected rows (or the whole batch) to quarantine with a report.

Modules (import the one you need; ``validate``, ``suite`` and ``expectations`` import Great
Expectations, which is slow to import, so this package imports nothing eagerly):

- :mod:`validation.errors`   ``BatchError``: a batch that cannot be read as a table at all.
- :mod:`validation.taxonomy` ``load_taxonomy``: the declared set of category paths.
- :mod:`validation.adapt`    ``read_listings_file`` and ``to_canonical`` (catalog adapter).
- :mod:`validation.images`   ``check_image``: path, size, format and full-decode checks.
- :mod:`validation.drift`    label (Jensen-Shannon) and price (KS) drift measures, the report section.
- :mod:`validation.expectations` the two drift expectations GX runs (shown on Data Docs).
- :mod:`validation.suite`    ``build_suite``: the ``listings_batch`` expectation suite, in code.
- :mod:`validation.validate` ``validate_batch``: the step itself.

CLI: ``python -m validation --feed DIR --json``.
"""
