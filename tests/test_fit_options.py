"""The fit options, written once (patchcore.fit_options): every fitting command lists them in one
order, a command receives them as one FitOptions object, and its defaults give the default preset's
config."""

from __future__ import annotations

from dataclasses import fields

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from patchcore.fit_options import FitOptions, fit_command


def _names(command) -> list[str]:
    return [p.name for p in command.params]


@pytest.mark.parametrize("name", ["fit", "eval", "export"])
def test_every_fitting_command_lists_the_fit_options_together_in_their_order(name):
    from export.cli import app

    command = get_command(app).commands[name]
    names, shared = _names(command), [f.name for f in fields(FitOptions)]
    start = names.index(shared[0])
    assert names[start:start + len(shared)] == shared


def test_a_command_receives_the_fit_options_as_one_object():
    got = {}
    app = typer.Typer()

    @app.command()
    @fit_command
    def run(data: str = typer.Option("here", "--data"), options: FitOptions = FitOptions(),
            extra: int = typer.Option(1, "--extra")):
        got.update(data=data, options=options, extra=extra)

    r = CliRunner().invoke(app, ["--data", "there", "--seed", "3", "--preset", "paper", "--extra", "2"])
    assert r.exit_code == 0, r.output
    assert got == {"data": "there", "options": FitOptions(seed=3, preset="paper"), "extra": 2}
    assert "--tile-overlap" in CliRunner().invoke(app, ["--help"]).output


def test_the_default_options_give_the_default_preset_config():
    pytest.importorskip("torch")
    from patchcore.config import preset_config

    assert FitOptions().config("effnet-lite0") == preset_config("default", backbone="effnet-lite0")
    assert FitOptions(preset="paper").config("wrn50") == preset_config("paper", backbone="wrn50")
    with pytest.raises(ValueError, match="latency-budget-ms"):
        FitOptions(latency_budget_ms=50.0).config("effnet-lite0")
