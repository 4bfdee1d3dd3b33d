"""Console hygiene for the command line: library chatter off while a command runs, warnings that matter kept.

The commands speak through their own one-line messages and progress bars; MONAI's module loggers
(``INFO - Generated: ...`` from Auto3DSeg's BundleGen) and Optuna's per-trial INFO lines would interleave
with them. Used as a library, proxy_bundle leaves logging alone: only the CLI enters :func:`quiet_libraries`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

# Library modules whose FutureWarnings (deprecations inside MONAI/torch/Optuna code paths the commands call) a
# user of the command cannot act on. Warnings raised by proxy_bundle itself still show.
_QUIET_WARNING_MODULES = r"(monai|torch|optuna|ignite|nibabel|numpy|scipy)(\..*)?$"


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """While inside: INFO-level logging off and library FutureWarnings ignored; WARNING and up still show.

    MONAI's ``get_logger`` sets each module logger to INFO with its own stdout handler when the module is
    imported, i.e. usually after this is entered, so a per-logger level would be overwritten:
    ``logging.disable`` is the one switch that also holds for loggers created later. Both are restored on exit.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=_QUIET_WARNING_MODULES)
            yield
    finally:
        logging.disable(previous)
