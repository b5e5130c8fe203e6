"""UnIVAL as a fairseq plugin: importing this package (or ``--user-dir`` pointing at it) registers the
``unival`` model, its tasks and criterions, and exposes the small public API."""
import os

# In a source checkout models/, tasks/, criterions/ and data_utils/ sit beside this folder, while an
# installed copy has them inside it (setup.py maps them under ``unival``). Looking in the parent folder
# too makes ``unival.models`` resolve the same way in both cases.
_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_parent, "models")) and os.path.isdir(os.path.join(_parent, "unival")):
    __path__.append(_parent)  # noqa: F821 (package __path__)

from unival import _compat  # noqa: E402,F401  (must run before fairseq registers anything)
from unival import models, tasks, criterions, optim  # noqa: E402,F401

__version__ = "0.1.0"

from unival.checkpoint import load_checkpoint  # noqa: E402
from unival.merge import merge_checkpoints  # noqa: E402

__all__ = ["load_checkpoint", "merge_checkpoints"]
