"""Hard validation: PyTorch against every backend that runs an exported file.

Every check runs the same inputs through PyTorch eager and through one backend (a
:class:`Runner`, made by the format that wrote the file), over the spec's sweep of batch sizes
and sequence lengths. For causal LMs a further check decodes token by token through the
stateful graph, feeding each call's state outputs back in, and compares with one full-sequence
PyTorch pass. Any miss fails the export: so does a NaN or inf in any output, PyTorch's included,
and an exported file that raises instead of running.

- :mod:`.sweep`: :func:`validate`, the cases; :mod:`.decode`: the decode check;
  :mod:`.record`: one check into the report;
- :mod:`.compare`: the elementwise comparison and default tolerances;
- :mod:`.report`: :class:`ValidationReport` and its table, JSON and JUnit renderings;
- :mod:`.runners`: :class:`Runner`, what a format hands validation.
"""

from .compare import TOLERANCES, compare
from .report import Check, ValidationReport
from .runners import Runner
from .sweep import validate

__all__ = ["TOLERANCES", "Check", "Runner", "ValidationReport", "compare", "validate"]
