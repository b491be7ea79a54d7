"""Logging of the command-line tools: one `--log-level` option and one line format for all of them."""
from __future__ import annotations

import argparse
import logging

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_log_level(parser: argparse.ArgumentParser) -> None:
    """Add `--log-level` (default INFO) to a command's parser."""
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="least severe log messages shown on stderr, Ray's own included (default: %(default)s)")


def setup_logging(level: str) -> None:
    """Log to stderr at `level` (a LOG_LEVELS name), this process and the Ray it starts or joins."""
    logging.basicConfig(level=level, format=LOG_FORMAT)  # no-op where logging is set up already (an embedding app, pytest)
    logging.getLogger("ray").setLevel(level)
    if level != "DEBUG":  # FAISS logs each CPU build it tries at INFO
        logging.getLogger("faiss.loader").setLevel("WARNING")
