"""One change of a project at a time: the lock under /run/netapply."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from reconciler import lock
from tests.kernelutil import kernel_snapshot, lock_held, run_cli

REPO = Path(__file__).resolve().parent.parent
def test_a_second_run_waits_then_names_the_holder(tmp_path: Path) -> None:
    directory = str(tmp_path / "locks")
    with lock_held("shop", directory) as holder:
        with pytest.raises(lock.LockError) as caught, lock.project_lock("shop", 0.2, directory):
            pass
        assert str(caught.value) == (
            f"project 'shop' is being changed by another netapply run (PID {holder.pid}, "
            f"lock {directory}/shop.lock); waited 0.2 s (--lock-timeout)")
        with lock.project_lock("other", 0.2, directory):  # other projects are not held up
            pass
    # The holder was killed: the kernel released its lock.
    with lock.project_lock("shop", 0.2, directory):
        assert Path(directory, "shop.lock").read_text() == f"{os.getpid()}\n"
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(Path(directory, "shop.lock")).st_mode) == 0o600


@pytest.mark.kernel
def test_apply_and_destroy_wait_for_the_lock(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(REPO / "examples" / "seed.yaml")
    before = kernel_snapshot()
    with lock_held("seed", lock.LOCK_DIR) as holder:
        for command in ("apply", "destroy"):
            code, _, err = run_cli(capsys, command, "--auto-approve", "--lock-timeout", "0.3",
                                   spec)
            assert (code, err.splitlines()[0]) == (1, (
                f"error: project 'seed' is being changed by another netapply run (PID "
                f"{holder.pid}, lock /run/netapply/seed.lock); waited 0.3 s (--lock-timeout)"))
        assert kernel_snapshot() == before
        code, _, _ = run_cli(capsys, "plan", spec)  # reading needs no lock
        assert code == 0
    code, out, _ = run_cli(capsys, "apply", "--auto-approve", "--lock-timeout", "0.3", spec)
    assert code == 0, out
    assert stat.S_IMODE(os.stat(lock.LOCK_DIR).st_mode) == 0o700
