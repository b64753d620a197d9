"""The model: charge-embedded, multi-fidelity MACE members, the committee, and the
training sets and settings a campaign trains them with.

May import: the foundation modules, ``execution`` and ``store``."""

import io
import warnings
from contextlib import redirect_stdout

#: Warnings MACE/e3nn/torch give on every model build or load, which would flood the
#: user's terminal: understood, harmless here, filtered in every process using the model.
QUIET_WARNINGS = (
    "The TorchScript type system",
    "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",
)
for _message in QUIET_WARNINGS:
    warnings.filterwarnings("ignore", message=_message)
# MACE prints "cuequivariance ... not available" when first imported on CPU-only installs
with redirect_stdout(io.StringIO()):
    import mace.tools.cg  # noqa: E402, F401
