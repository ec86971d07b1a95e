"""Kubernetes submission: `ray-pipeline submit` and `ray-pipeline status` (RayJob)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `submit` and `status` subcommands to the CLI."""
