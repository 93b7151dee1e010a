"""Backends without replicas (NumPy, OpenVINO): everything is local."""

import numpy as np


def num_replicas():
    return 1


def all_gather_rows(row):  # pragma: no cover - never called with 1 replica
    return row[None]


def check_at_least(total, minimum, message):
    if float(np.asarray(total)) < minimum:
        raise ValueError(message)
    return total
