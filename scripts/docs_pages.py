"""The documentation site's generated pages, built from the code at docs-build time.

MkDocs runs this file as a hook (``mkdocs.yml``: ``hooks``): ``on_files`` adds the pages below
to the site without writing them to ``docs/``, so they cannot drift from the code:

- ``reference/cli.md``: every command and option of ``patchcore`` and ``patchcore-rt``, from the
  Typer apps themselves (Typer's own Markdown generator);
- ``reference/exit-codes.md``: the exit-code table of :mod:`runtime.errors`;
- ``reference/manifest.md``: the bundle manifest's fields and what each must be, from the checks
  that :func:`runtime.manifest.validate_manifest` runs;
- ``reference/result-sinks.md``: the ``--publish`` kinds, from the sinks table
  (:mod:`runtime.line.sinks.table`), and the ``camera --trigger`` kinds (:mod:`runtime.line.triggers`);
- ``reference/camera-sources.md``: the kinds of frame source ``camera`` reads, from the table of
  :mod:`runtime.line.sources.table`;
- ``benchmark-figures.md``: ``BENCHMARKS.md`` as written by the last benchmark run.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# site path -> function returning the page's Markdown
PAGES = {
    "reference/cli.md": "cli_reference",
    "reference/exit-codes.md": "exit_codes_page",
    "reference/manifest.md": "manifest_reference",
    "reference/result-sinks.md": "result_sinks_page",
    "reference/camera-sources.md": "camera_sources_page",
    "benchmark-figures.md": "benchmarks_page",
}


def _escape_html(markdown: str) -> str:
    """``<`` and ``>`` outside code: help texts say ``models/<class>-<backbone>``, which a browser
    would take for tags."""
    out, fence = [], False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            fence = not fence
        if not fence:
            parts = line.split("`")
            parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
            line = "`".join(parts)
        out.append(line)
    return "\n".join(out)


def _typer_markdown(app, prog: str) -> str:
    import click
    import typer
    from typer.cli import get_docs_for_click

    command = typer.main.get_command(app)
    with click.Context(command, info_name=prog) as ctx:
        text = get_docs_for_click(obj=command, ctx=ctx, name=prog, indent=1)
    return _escape_html(text.strip()) + "\n"


def cli_reference() -> str:
    from export.cli import app as patchcore_app
    from runtime.cli.app import app as runtime_app

    return "\n".join([
        "# Command-line reference",
        "",
        "Generated from the command lines themselves when the site is built: what `--help` says,",
        "every command and option. `patchcore` fits, evaluates and exports (PyTorch); `patchcore-rt`",
        "runs bundles without torch. Exit codes: [one table for every command](exit-codes.md).",
        "",
        _typer_markdown(patchcore_app, "patchcore"),
        _typer_markdown(runtime_app, "patchcore-rt"),
    ])


def exit_codes_page() -> str:
    from runtime import errors

    return "\n".join([
        "# Exit codes",
        "",
        "Every command of `patchcore`, `python -m export` and `patchcore-rt` exits with a code from one",
        "table (`runtime/errors.py`, printed at the end of each `--help`; this page is generated from it):",
        "",
        errors.exit_codes_markdown(),
        "",
        "A bad value for an option or input is exit 2 with one line on stderr in every command line,",
        "never a traceback. Commands that write a folder check it before any work: a file in its place",
        "or on its path, or a folder that cannot be written, is exit 9 at once.",
        "",
    ])


def _wanted(check) -> str:
    """What a manifest check asks of a value, in its own words (it says so for a value that fails)."""
    return check(_Absent()) or "anything"


class _Absent:
    """A value no check accepts."""


def manifest_reference() -> str:
    from runtime import manifest as m
    from runtime.manifest_docs import FIELD_DOCS
    from runtime.preprocess import PreprocessSpec

    lines = [
        "# Bundle manifest reference",
        "",
        f"`manifest.json` (format `{m.FORMAT}`, schema version {m.SCHEMA_VERSION}) describes everything",
        "the runtime needs to use a bundle. This page is generated from the checks the runtime runs on",
        "every manifest it opens (`runtime/manifest.py`): a field that is missing or is not what its",
        "row says makes the bundle a bad bundle (exit 3), with the field named.",
        "",
        "## Fields",
        "",
        "| field | required | must be | what it is |",
        "|---|---|---|---|",
    ]
    for fields, required in ((m.FIELDS, "yes"), (m.OPTIONAL_FIELDS, "no")):
        for name, check in fields.items():
            lines.append(f"| `{name}` | {required} | {_wanted(check)} | {FIELD_DOCS.get(name, '')} |")
    lines += [
        "",
        "Beyond single fields: `memory_bank.dim` equals `features.target_dim`; `threshold.scale` is > 0",
        "when a threshold is set; the preprocessing's network input equals `features.input_size` and its",
        "tiles fall on the patch grid; every file the manifest names is listed in `files` (each with its",
        f"sha256 and size, none outside the bundle); `graphs.*.kind` is one of {list(m.GRAPH_KINDS)} and",
        f"`graphs.*.dtype` one of {list(m.BANK_DTYPES)}. The digest `{m.DIGEST_FIELD}` is the sha256 of the",
        "manifest's canonical JSON without itself; the bundle id is `name@` and its first 12 hex digits.",
        "",
        "## `preprocess`",
        "",
        "The preprocessing spec (`runtime/preprocess.py`, `PreprocessSpec`), one source of truth for",
        "fitting, export checks and the runtime. Unknown keys are refused.",
        "",
        "| key | default |",
        "|---|---|",
    ]
    for f in dataclasses.fields(PreprocessSpec):
        lines.append(f"| `{f.name}` | `{f.default!r}` |")
    doc = "\n".join(line.strip() for line in (PreprocessSpec.__doc__ or "").splitlines())
    lines += ["", "```text", doc.strip(), "```", ""]
    return "\n".join(lines)


def result_sinks_page() -> str:
    from runtime.line.sinks.table import describe

    rows = ["| scheme | what | Python package | example |", "|---|---|---|---|"]
    rows += [f"| `{d['scheme']}://` | {d['what']} | {d['needs']} | `{d['example']}` |" for d in describe()]
    return ("# Result sinks\n\n<!-- generated from runtime/line/sinks/table.py at docs-build time -->\n"
            "What `--publish URL` (on `watch`, `camera` and `serve`) can send results to; the packages come with "
            "`pip install 'patchcore-rt[line]'`. How delivery works and an example per kind: "
            "[Connecting to the line](../line-systems.md).\n\n" + "\n".join(rows) + "\n" + _triggers_table())


def _triggers_table() -> str:
    from runtime.line.triggers import TRIGGERS

    rows = ["| scheme | the trigger | Python package | example |", "|---|---|---|---|"]
    rows += [f"| `{k.key}://` | {k.what} | {k.needs} | `{k.example}` |" for k in TRIGGERS]
    return ("\n## PLC triggers\n\n<!-- generated from runtime/line/triggers/__init__.py -->\n"
            "What `camera --trigger URL` can take the PLC's trigger from (the same handshake over each: "
            "[the trigger handshake](../line-systems.md#the-trigger-handshake-score-when-the-plc-asks)).\n\n"
            + "\n".join(rows) + "\n")


def camera_sources_page() -> str:
    from runtime.line.sources.table import KINDS

    rows = ["| kind | source | what it reads | needs |", "|---|---|---|---|"]
    for k in KINDS:
        schemes = ", ".join(f"`{s}://`" for s in k.schemes if s not in ("", "*"))
        source = "device index, file path, any other URL" if "*" in k.schemes else schemes
        rows.append(f"| {k.key} | {source} (e.g. `{k.example.split(', ')[0]}`) | {k.what} | "
                    f"{k.needs or 'the base runtime'} |")
    return "\n".join([
        "# Camera sources",
        "",
        "The kinds of frame source `patchcore-rt camera SOURCE` reads, generated from the table in",
        "`runtime/line/sources/table.py` (the URL scheme picks the row; `info` lists the same rows and",
        "whether each runs on that machine). Industrial cameras: [Industrial cameras](../cameras.md).",
        "",
        *rows,
        "",
        "Adding a kind is one module in `runtime/line/sources/` (a `FrameSource`: open, read frames with",
        "their ids and timestamps, trigger, close) and one row in the table.",
        "",
    ])


def benchmarks_page() -> str:
    text = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    head = ("<!-- generated from BENCHMARKS.md at docs-build time -->\n"
            "The figures below are `BENCHMARKS.md` as the benchmark scripts last wrote it "
            "(`make bench`, `benchmarks/`): each section names its machine, command and date.\n\n")
    first, _, rest = text.partition("\n")
    return f"{first}\n\n{head}{rest}" if first.startswith("# ") else f"# Benchmarks\n\n{head}{text}"


def page(path: str) -> str:
    return globals()[PAGES[path]]()


def on_files(files, config):
    """MkDocs hook: add the generated pages."""
    from mkdocs.structure.files import File

    if str(REPO) not in sys.path:  # MkDocs restores sys.path after loading a hook: this checkout's code, again
        sys.path.insert(0, str(REPO))

    for path in PAGES:
        files.append(File.generated(config, path, content=page(path)))
    return files
