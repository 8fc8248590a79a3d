"""dift.core.logs.quiet_third_party silences exactly the third-party chatter it names, nothing else."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r'''
import warnings
from dift.core.logs import quiet_third_party
quiet_third_party()
for name in ("gradient_checkpointing_enable", "gradient_checkpointing_disable", "is_gradient_checkpointing"):
    warnings.warn(f"`{name}` is deprecated and will be removed in v6. Use ...", FutureWarning)
warnings.warn("`some_other_option` is deprecated and will be removed in v6.", FutureWarning)
'''


def test_checkpointing_rename_warnings_are_silenced_and_others_are_not():
    done = subprocess.run([sys.executable, "-W", "default", "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "gradient_checkpointing" not in done.stderr
    assert "`some_other_option` is deprecated" in done.stderr
