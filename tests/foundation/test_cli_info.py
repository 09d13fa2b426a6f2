import torch
from typer.testing import CliRunner

from semsim_audit.cli.main import app


def test_info_shows_versions_device_and_locations():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert torch.__version__.split("+")[0] in result.output
    assert "device (auto)" in result.output
    assert "photos" in result.output


def test_help_lists_info():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "info" in result.output
