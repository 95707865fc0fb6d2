"""The runtime must work where torch is not installed: apps embed it with numpy + onnxruntime."""

import subprocess
import sys

SCRIPT = """
import sys
# Make torch and the torch-based packages unimportable, as on an app's machine.
for blocked in ("torch", "favor.ops", "favor.exporter", "click"):
    sys.modules[blocked] = None
import numpy as np
from favor.runtime import Generator, Session
session = Session(sys.argv[1])
out = session.run(tokens=np.array([[1, 2, 3]]), **session.initial_state(1))
tokens = Generator(session).generate([1, 2, 3], 5)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "click"))
print(out["logits"].shape, len(tokens), [m for m in loaded if sys.modules[m] is not None])
"""


def test_runtime_runs_with_torch_unimportable(lm_dir):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(lm_dir)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 3, 30) 5 []"
