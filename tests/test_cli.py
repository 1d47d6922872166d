"""The command line as people and pipelines use it: exit codes, options in
either place, JSON errors, completion (no kernel needed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import cli, desired, planner
from reconciler import spec as spec_mod
from reconciler.state.observe import ObservedState

REPO = Path(__file__).resolve().parent.parent
SHOP = REPO / "examples" / "shop.yaml"
BAD = """\
version: 1
project: shop
networks:
  front: {subnet: 172.30.1.0/24}
containers:
  web:
    networks:
      front: {ipv4_address: 172.30.2.10}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_usage_error_exits_1_not_the_changes_pending_code(
        capsys: pytest.CaptureFixture[str]) -> None:
    # The example: 2 would read as "changes pending" to a pipeline.
    code, out, err = run(capsys, "plan", "--detailed-exitcode", "--outptu", "json", str(SHOP))
    assert code == cli.EXIT_ERROR
    assert "unrecognized arguments: --outptu" in err and out == ""


def test_a_usage_error_under_output_json_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--output", "json", "--bogus", str(SHOP))
    assert code == cli.EXIT_ERROR
    doc = json.loads(out)
    assert doc["errors"][0]["message"].endswith("unrecognized arguments: --bogus")


@pytest.mark.parametrize("argv, colour_off", [
    (["--no-color", "validate", "S"], True),
    (["validate", "--no-color", "S"], True),
    (["validate", "S", "--no-color"], True),
    (["validate", "S"], False),
])
def test_global_options_work_before_and_after_the_subcommand(
        argv: list[str], colour_off: bool) -> None:
    assert cli._parser().parse_args(argv).no_color is colour_off


def test_spec_errors_under_output_json_are_json_with_places(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text(BAD)
    for argv in (["plan", "--output", "json"], ["show", "--output=json"],
                 ["validate", "--output", "json"]):
        code, out, err = run(capsys, *argv, str(spec))
        assert code == cli.EXIT_ERROR, argv
        problem, = json.loads(out)["errors"]
        assert problem["file"] == str(spec) and problem["line"] == 8 and problem["column"] > 1
        assert "outside network 'front'" in problem["message"]
        assert err == ""


def test_validate_output_json_when_valid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", "--output", "json", str(SHOP))
    doc = json.loads(out)
    assert code == cli.EXIT_OK and doc["errors"] == [] and "web" in doc["containers"]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_knows_the_subcommands_and_their_options(
        shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "completion", shell)
    assert code == cli.EXIT_OK
    for word in ("validate", "destroy", "--detailed-exitcode", "--rollback-on-failure"):
        assert word in out


def test_bash_completes_a_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The script really completes in bash: `netapply pl<TAB>` gives plan."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    run(capsys, "completion", "bash")
    script = tmp_path / "netapply.bash"
    cli.main(["completion", "bash"])
    script.write_text(capsys.readouterr().out)
    probe = (f"source {script}; COMP_WORDS=(netapply pl); COMP_CWORD=1; "
             "COMP_LINE='netapply pl'; COMP_POINT=${#COMP_LINE}; "
             "_shtab_netapply; printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["plan"]


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_the_json_plan_nests_objects_never_json_in_a_string() -> None:
    """The firewall's chains were canonical JSON text inside the plan."""
    spec = spec_mod.load(SHOP)
    wanted = desired.build(spec, ObservedState({}))
    doc = planner.plan(wanted, {}).to_json(spec.project)
    table = next(c for c in doc["changes"] if c["kind"] == "firewall")
    assert isinstance(table["after"]["chains"][0], dict) and "hook" in table["after"]["chains"][0]
    for text in _strings(doc):
        if text[:1] in "[{":
            with pytest.raises(ValueError):
                json.loads(text)


LABELLED = """\
version: 1
project: lab
networks:
  front: {subnet: 172.30.1.0/24, labels: {team: web, tier: "1"}}
  back: {subnet: 172.30.2.0/24}
containers:
  web: {networks: [front, back]}
"""


@pytest.mark.kernel
def test_labels_appear_in_plan_and_show(
        sandbox: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = sandbox / "lab.yaml"
    spec.write_text(LABELLED)
    code, out, _ = run(capsys, "--no-color", "plan", str(spec))
    assert code == 0
    bridge = next(line for line in out.splitlines() if "bridge" in line and "front" in line)
    assert bridge.endswith("team=web tier=1")
    assert not any("team=web" in line for line in out.splitlines() if "network back" in line)
    code, out, _ = run(capsys, "plan", "--output", "json", str(spec))
    assert code == 0
    changes = json.loads(out)["changes"]
    labelled = {tuple(c["key"]) for c in changes if c.get("labels") == {"team": "web",
                                                                          "tier": "1"}}
    assert labelled and all("front" in str(c["after"].get("network")) for c in changes
                            if tuple(c["key"]) in labelled)
    assert run(capsys, "apply", "--auto-approve", str(spec))[0] == 0
    code, out, _ = run(capsys, "--no-color", "show", str(spec))
    assert code == 0
    assert any(line.endswith("team=web tier=1") and "front" in line
               for line in out.splitlines())
    code, out, _ = run(capsys, "show", "--output", "json", str(spec))
    assert code == 0
    shown = json.loads(out)["resources"]
    assert any(r.get("labels", {}).get("team") == "web" and r["kind"] == "bridge"
               for r in shown)


def test_no_arguments_at_all_is_a_usage_error_not_a_traceback(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == cli.EXIT_ERROR and "required: COMMAND" in err


def test_a_misspelt_option_is_named_with_the_one_it_resembles(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "plan", "--outptu", "json", str(SHOP))
    assert code == cli.EXIT_ERROR and "--outptu: did you mean --output?" in err


@pytest.mark.parametrize("argv", [["plan", "--out", ""], ["graph", "-o", ""]])
def test_an_empty_output_file_name_is_refused(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *argv, str(SHOP))
    assert code == cli.EXIT_ERROR and "an empty file name" in err and out == ""


@pytest.mark.parametrize("out_in_spec", ["file", "new file in the directory"])
def test_plan_out_never_replaces_the_spec(
        out_in_spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "spec"
    directory.mkdir()
    (directory / "shop.yaml").write_text(SHOP.read_text())
    spec, out = ((directory / "shop.yaml", directory / "shop.yaml") if out_in_spec == "file"
                 else (directory, directory / "plan.yaml"))
    code, _, err = run(capsys, "plan", str(spec), "--out", str(out))
    assert code == cli.EXIT_ERROR and "is part of the spec" in err
    assert (directory / "shop.yaml").read_text() == SHOP.read_text()
    assert sorted(p.name for p in directory.iterdir()) == ["shop.yaml"]


@pytest.mark.parametrize("argv", [["completion", "bash"], ["validate", str(SHOP)],
                                  ["import", "compose",
                                   str(REPO / "examples" / "compose" / "compose.yaml")]])
def test_a_result_that_cannot_be_written_fails_the_command(argv: list[str]) -> None:
    """stdout is the result (a full disk): exit 1 and say so; not exit 0 with
    an empty file, nor the result dumped on stderr, nor a traceback."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "reconciler.cli", *argv], stdout=full,
                              stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60)
    assert done.returncode == cli.EXIT_ERROR
    assert "the output could not be written (No space left on device)" in done.stderr
    assert "Traceback" not in done.stderr and "_shtab" not in done.stderr


def test_ctrl_c_while_starting_is_interrupted_not_a_traceback() -> None:
    """The entry point imports the command line itself: an interrupt there
    is reported as one (130), as it is once running."""
    probe = ("import builtins, sys\n"
             "real = builtins.__import__\n"
             "def interrupted(name, *a, **k):\n"
             "    if name == 'reconciler' and a and a[2] and 'cli' in a[2]:\n"
             "        raise KeyboardInterrupt\n"
             "    return real(name, *a, **k)\n"
             "builtins.__import__ = interrupted\n"
             "from reconciler.entry import main\n"
             "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
