"""Sphinx glue for a book that works offline (loaded by ``_config.yml``, ``sphinx.local_extensions``).

MathJax comes from the ``sphinx-mathjax-offline`` package and the ipywidgets HTML manager from
``book/_static/widgets`` (``make install`` fetches it with npm); this extension stops the build
with the command to run when the widget manager is missing, and keeps each page free of a
script error that Sphinx 7 causes: inline scripts that an extension registers after the builder
has started (sphinx-thebe's ``const THEBE_JS_URL = ...`` among them) are written twice, and the
second ``const`` declaration throws in the browser.
"""

from __future__ import annotations

from pathlib import Path

from sphinx.errors import ConfigError

WIDGET_MANAGER = "widgets/embed.js"  # under a folder of html_static_path; _config.yml's nb_ipywidgets_js names it


def check_widget_manager(app) -> None:
    """Fail the build, with the command that fixes it, if the widget manager is not in the static files."""
    if app.builder.format != "html":
        return
    folders = [Path(app.confdir or app.srcdir, folder) for folder in app.config.html_static_path]
    if not any((folder / WIDGET_MANAGER).is_file() for folder in folders):
        own = [f"{folder}/{WIDGET_MANAGER}" for folder in app.config.html_static_path if not Path(folder).is_absolute()]
        raise ConfigError(
            f"no {' or '.join(own) or WIDGET_MANAGER} (the ipywidgets HTML manager, which renders the saved "
            "widgets): run `make install`, which fetches it with npm"
        )


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep the first of each script a page would load or run twice (same file or same inline body)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        filename = getattr(script, "filename", script) or ""  # Sphinx writes an inline script's name as None or ""
        attributes = getattr(script, "attributes", {})
        key = (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def setup(app):
    app.connect("builder-inited", check_widget_manager)
    app.connect("html-page-context", drop_repeated_scripts, priority=900)  # after the extensions that add scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}
