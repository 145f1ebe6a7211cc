"""The scripts and styles of GX Data Docs, served locally so that Data Docs work offline.

GX builds Data Docs pages that load Bootstrap, bootstrap-table, jQuery, Font Awesome, Vega and
a few more from public CDNs. On a network without internet (where many marketplaces train) the
pages are then unstyled and the index's table of validation results stays empty (it is built
by bootstrap-table). The same files are npm packages: ``make venv`` fetches them once with
``npm pack`` into :func:`assets_dir`, and the Data Docs app of the Airflow plugin rewrites each
CDN address of a page to ``/data-docs/_assets/<package>/<file>`` as it serves the page.

CLI: ``python plugins/data_docs_assets.py fetch [--dest DIR]`` (what ``make venv`` runs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {
    "@forevolve/bootstrap-dark@1.1.0": "bootstrap-dark",
    "bootstrap-datepicker@1.9.0": "bootstrap-datepicker",
    "@fortawesome/fontawesome-free@6.6.0": "fontawesome-free",
    "bootstrap@4.3.1": "bootstrap",
    "bootstrap-table@1.19.1": "bootstrap-table",
    "vega@5.33.1": "vega",
    "vega-lite@5.23.0": "vega-lite",
    "vega-embed@6.29.0": "vega-embed",
    "popper.js@1.12.9": "popper.js",
    "jquery@3.7.1": "jquery",
}
"""npm package spec -> folder under :func:`assets_dir` (the package's content)."""

CDN_PREFIXES = {
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/": "bootstrap-dark/",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/": "bootstrap-datepicker/dist/",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/": "fontawesome-free/",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/": "bootstrap/dist/",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/": "bootstrap/dist/",
    "https://unpkg.com/bootstrap-table@1.19.0/": "bootstrap-table/",
    "https://unpkg.com/bootstrap-table@1.19.1/": "bootstrap-table/",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/": "popper.js/dist/umd/",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
}
"""CDN address (prefix) in a GX 1.x Data Docs page -> path under :func:`assets_dir`.

Whole addresses (no trailing ``/``) are replaced only when followed by a quote."""


def assets_dir() -> Path:
    """``$LCP_DATA_DOCS_ASSETS``, else ``<venv>/share/lcp-data-docs-assets``."""
    env = os.environ.get("LCP_DATA_DOCS_ASSETS")
    return Path(env) if env else Path(sys.prefix) / "share" / "lcp-data-docs-assets"


def localize(html: str, prefix: str) -> str:
    """A Data Docs page with its CDN addresses pointing at the local copies under ``prefix``.

    Args:
        html: the page.
        prefix: URL path the assets are served at (e.g. ``/data-docs/_assets``).

    Returns:
        The page; addresses of packages missing from :func:`assets_dir` are left as they were.
    """
    root = assets_dir()
    for cdn, local in sorted(CDN_PREFIXES.items(), key=lambda kv: -len(kv[0])):
        if not (root / local.split("/", 1)[0]).is_dir():
            continue
        if cdn.endswith("/"):
            html = html.replace(cdn, f"{prefix}/{local}")
        else:
            for quote in ('"', "'"):
                html = html.replace(f"{cdn}{quote}", f"{prefix}/{local}{quote}")
    return html


def fetch(dest: Path) -> list[str]:
    """Downloads :data:`PACKAGES` from the npm registry (``npm pack``) and unpacks them in ``dest``.

    Packages already unpacked are kept. Returns the folders unpacked now.

    Raises:
        FileNotFoundError: when ``npm`` is not installed.
        subprocess.CalledProcessError: when npm cannot fetch a package.
    """
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for spec, folder in PACKAGES.items():
        target = dest / folder
        if (target / "package.json").is_file():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(["npm", "pack", spec, "--silent", "--pack-destination", tmp],
                                 check=True, capture_output=True, text=True).stdout.split()
            with tarfile.open(Path(tmp) / out[-1]) as tar:
                tar.extractall(tmp, filter="data")
            partial = dest / f".{folder}.partial"
            if partial.exists():  # left by a killed fetch
                shutil.rmtree(partial)
            (Path(tmp) / "package").rename(partial)
            partial.rename(target)
        done.append(folder)
    return done


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python plugins/data_docs_assets.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch"])
    parser.add_argument("--dest", type=Path, default=None)
    args = parser.parse_args(argv)
    dest = args.dest or assets_dir()
    try:
        done = fetch(dest)
    except FileNotFoundError:
        print("npm not found: Data Docs will load their scripts and styles from the CDNs "
              "(install Node.js and npm, then `make venv`, for offline Data Docs)", file=sys.stderr)
        return 0
    print(f"Data Docs assets in {dest}" + (f" (fetched {', '.join(done)})" if done else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
