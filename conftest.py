"""Run-wide test settings, set before anything is collected.

They sit in the root conftest so that they apply to every test *and* to the
notebooks nbval runs (their kernels inherit this process's environment),
whether pytest is started on the whole repository or on one folder.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("AGELIB_SMOKE", "1")  # tests and notebooks run tiny
os.environ.pop("AGELIB_EPOCHS", None)  # ... at the smoke preset's length, whatever the shell says
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network for model weights
os.environ.setdefault("MPLBACKEND", "Agg")
# run records go to a scratch folder, never to the committed results/; it is made only
# when none was named, and removed when the run ends (each run used to leave one behind)
if not os.environ.get("AGELIB_RESULTS"):
    _scratch = tempfile.mkdtemp(prefix="agelib-results-")
    os.environ["AGELIB_RESULTS"] = _scratch
    atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
# notebooks run in notebooks/: a relative AGELIB_DATA must not change meaning there
if os.environ.get("AGELIB_DATA"):
    os.environ["AGELIB_DATA"] = os.path.abspath(os.environ["AGELIB_DATA"])
