from click.testing import CliRunner

from wageubn_sim.cli import main


def test_help_and_version():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "demo" in r.output and "modes" in r.output
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "wageubn-sim" in r.output


def test_modes_table_lists_every_mode():
    r = CliRunner().invoke(main, ["modes"])
    assert r.exit_code == 0
    for name in ("Rounding.HALF_EVEN", "AP_RND_CONV", "Overflow.SAT_SYM", "AP_SAT_SYM", "narrow=1"):
        assert name in r.output


def test_demo_passes_its_checks():
    r = CliRunner().invoke(main, ["demo", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "all checks passed" in r.output


def test_unknown_command_fails():
    assert CliRunner().invoke(main, ["frobnicate"]).exit_code == 2
