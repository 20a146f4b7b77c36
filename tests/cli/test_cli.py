import pytest
from typer.testing import CliRunner

from tissueseg import __version__
from tissueseg.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["data"], ["wsss"], ["demo"], ["data", "check"], ["data", "synth"],
                                  ["wsss", "run"], ["wsss", "train-cls"], ["wsss", "pseudo-masks"],
                                  ["wsss", "train-seg"], ["wsss", "evaluate"], ["version"], ["semi"],
                                  ["semi", "train"], ["semi", "evaluate"], ["predict"]])
def test_help_on_every_command(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_synth_then_check_ok_and_broken_dataset_exits_1(tmp_path):
    out = tmp_path / "syn"
    result = runner.invoke(app, ["data", "synth", str(out), "--n", "8", "--n-val", "3", "--n-test", "3",
                                 "--size", "32"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "check", str(out), "--format", "luad-histoseg"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output

    again = runner.invoke(app, ["data", "synth", str(out), "--n", "8"])
    assert again.exit_code == 1 and "overwrite" in again.output

    victim = sorted((out / "val" / "mask").glob("*.png"))[0]
    victim.write_bytes(b"not a png")
    result = runner.invoke(app, ["data", "check", str(out), "--format", "luad-histoseg"])
    assert result.exit_code == 1
    assert victim.name in result.output.replace("\n", "")


def test_cli_lets_idle_openmp_threads_sleep_unless_the_user_chose():
    import os
    import subprocess
    import sys

    code = "import os, tissueseg.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "PASSIVE"
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                            capture_output=True, text=True, check=True).stdout.strip()
    assert chosen == "ACTIVE"
