"""Backends without replicas (NumPy, OpenVINO): everything is local."""


def num_replicas():
    return 1


def all_gather_rows(row):  # pragma: no cover - never called with 1 replica
    return row[None]


def named_axes():
    return ()


def join_all_processes(what, timeout):
    return None


def num_processes(what):
    return 1


def sum_over_processes(vector):  # pragma: no cover - never with 1 process
    return vector
