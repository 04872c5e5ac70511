"""Keep library chatter (per-step dicts, weight-loading bars, deprecation notices) out of the
pipeline's own progress: errors stay, the rest goes.

Without importing the libraries: the CLI quiets them before every command, and a command that
stops on a config typo must not pay for importing torch and transformers first (8 s here). The
environment and the standard `logging` levels cover libraries imported later; those already
imported are told directly.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LIBRARIES = ("transformers", "trl", "datasets", "accelerate")


def quiet_libraries() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # every tqdm bar, whoever draws it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|trl|accelerate)")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|trl|accelerate|torch)")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        logs = sys.modules["transformers"].utils.logging
        logs.set_verbosity_error()
        logs.disable_progress_bar()
