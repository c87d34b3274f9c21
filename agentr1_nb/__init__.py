"""agentr1_nb: train multi-turn tool-using LLM agents with RL (Agent-R1) in notebooks, on one GPU or a CPU."""

import logging

__version__ = "0.1.0"

# bitsandbytes 0.50 warns when imported on AVX512-BF16 cores (by peft, transformers or sentence-transformers,
# whichever comes first) that an optional CPU kernel (the `kernels` package) is missing; that kernel serves
# only the repacked inference path `policy._keep_4bit_weights_as_loaded` switches off, so the warning says
# nothing about this package's runs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import Config, get_config  # noqa: E402, F401
