"""The documentation: generated reference pages cover what the code has, the site builds with
``--strict`` (broken links and pages left out of the navigation fail), README's links resolve."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from runtime import errors
from runtime import manifest
from runtime.manifest_docs import FIELD_DOCS

REPO = Path(__file__).resolve().parents[1]


def _docs_pages():
    spec = importlib.util.spec_from_file_location("docs_pages", REPO / "scripts" / "docs_pages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _commands(app, prog: str):
    """(command path, click command) for every command of a Typer app."""
    root = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        if getattr(cmd, "commands", None):  # a group (Typer's own click classes)
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}")
        else:
            out.append((path, cmd))

    walk(root, prog)
    return out


def test_cli_reference_has_every_command_and_option():
    from export.cli import app as patchcore_app
    from runtime.cli.app import app as runtime_app

    page = _docs_pages().page("reference/cli.md")
    n = 0
    for app, prog in ((patchcore_app, "patchcore"), (runtime_app, "patchcore-rt")):
        for path, cmd in _commands(app, prog):
            if cmd.hidden:
                continue
            section = re.split(rf"^#+ `{re.escape(path)}`$", page, maxsplit=1, flags=re.M)
            assert len(section) == 2, f"{path} has no section in the command-line reference"
            body = re.split(r"^#+ ", section[1], maxsplit=1, flags=re.M)[0]
            for p in cmd.params:
                if p.param_type_name == "option" and not getattr(p, "hidden", False):
                    assert any(o in body for o in p.opts), f"{path} {p.opts} is missing from its section"
                    n += 1
    assert n > 100  # both command lines' options, not an empty walk


def test_manifest_reference_documents_every_checked_field():
    checked = set(manifest.FIELDS) | set(manifest.OPTIONAL_FIELDS)
    assert set(FIELD_DOCS) == checked, "FIELD_DOCS must describe exactly the fields the runtime checks"
    page = _docs_pages().page("reference/manifest.md")
    for field in checked:
        row = next((line for line in page.splitlines() if line.startswith(f"| `{field}` |")), None)
        assert row is not None, field
        assert FIELD_DOCS[field] in row and "anything" not in row  # a check's own words, not a blank
    assert "| `tile_stride` |" in page  # the preprocess spec's keys


def test_exit_codes_page_is_the_table_of_runtime_errors():
    assert errors.exit_codes_markdown() in _docs_pages().page("reference/exit-codes.md")


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text) if "://" not in t]
    assert any(t.startswith("docs/") for t in links)
    for target in links:
        assert (REPO / target).exists(), f"README links to {target}, which does not exist"


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None,
                    reason="mkdocs is not installed (pip install '.[docs]')")
def test_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    r = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    html = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "patchcore-rt watch" in html and "--overlays" in html
    assert (tmp_path / "site" / "reference" / "manifest" / "index.html").is_file()
    assert (tmp_path / "site" / "benchmark-figures" / "index.html").is_file()
