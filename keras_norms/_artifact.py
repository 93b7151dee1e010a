"""The one artifact writer: where an export may go, and how it gets there.

Every export (a SavedModel directory, an `.onnx` / `.tflite` / `.pt2`
file, an OpenVINO `.xml` + `.bin` pair) is written the same way:

1. `target(...)`: the target is checked before any work (a path of the
   right kind, nothing there or `overwrite=True` over an earlier export
   only, never the working directory);
2. `write(target, produce)`: `produce` writes the artifact into a hidden
   staging folder beside the target (`.NAME.*.tmp`) and checks it there
   (the caller's check, in the artifact's runtime); the target is checked
   again (it may have changed meanwhile); the artifact replaces the
   target as one unit (`replace`); the staging folder is removed.

Nothing but an earlier export is ever removed, and that only once the new
one is in place.
"""

import dataclasses
import os
import shutil
import tempfile

# Written into every SavedModel export, so `overwrite=True` recognizes
# one of ours.
MARKER = "keras_norms_export.json"
# What a SavedModel directory holds: `overwrite=True` also replaces a
# directory holding nothing else (an export written before the marker).
_SAVED_MODEL_ENTRIES = {
    "saved_model.pb",
    "saved_model.pbtxt",
    "fingerprint.pb",
    "variables",
    "assets",
    MARKER,
}


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an export goes.

    Attributes:
        filepath: The path as the user gave it (for messages).
        path: Its absolute path: the directory, or the file a runtime
            opens (OpenVINO's `.xml`).
        files: Every path the export writes, the opened one last
            (OpenVINO: the `.bin`, then the `.xml`).
        directory: Whether the export is a directory (a SavedModel).
        overwrite: Whether an earlier export there may be replaced.
    """

    filepath: str
    path: str
    files: tuple
    directory: bool
    overwrite: bool


def target(filepath, suffix, overwrite, format=None):
    """The checked `Target` of an export, or a clear error.

    Args:
        filepath: Where to write (str or os.PathLike).
        suffix: The file name ending the format requires (`".onnx"`,
            `".xml"`, ...), or `None` for a directory (a SavedModel).
        overwrite: Whether an earlier export there may be replaced.
        format: The format's name, for messages.

    Raises:
        TypeError: `filepath` is not a path.
        ValueError: A file name without `suffix`.
        FileExistsError: Something is there and `overwrite=False`; a
            directory where a file goes, or a file where a directory
            goes; a directory holding anything but an earlier export;
            the working directory or one of its parents.
    """
    try:
        filepath = os.fspath(filepath)
    except TypeError:
        raise TypeError(
            "Argument `filepath` must be a path (str or os.PathLike). "
            f"Received: filepath={filepath!r}"
        ) from None
    path = os.path.abspath(filepath)
    if suffix is None:
        found = Target(filepath, path, (path,), True, overwrite)
    else:
        if not filepath.endswith(suffix):
            raise ValueError(
                f"Argument `filepath` must end with {suffix!r} for "
                f"format={format!r} (Keras' exporter requires it). "
                f"Received: filepath={filepath!r}"
            )
        files = (path,)
        if suffix == ".xml":  # OpenVINO writes its weights beside it
            files = (path[: -len(".xml")] + ".bin", path)
        found = Target(filepath, path, files, False, overwrite)
    check(found)
    return found


def check(target):
    """Raise if exporting to `target` is not (or no longer) safe."""
    if target.directory:
        _check_directory(target)
        return
    for name in target.files:
        if not os.path.lexists(name):
            continue
        if os.path.isdir(name) and not os.path.islink(name):
            raise FileExistsError(
                f"The export path {name!r} is a directory; this format "
                "writes a file. Choose another path. "
                f"Received: filepath={target.filepath!r}"
            )
        if not target.overwrite:
            raise FileExistsError(
                f"The export path {name!r} already exists. Pass "
                "overwrite=True to replace it (only once the new export is "
                "written and verified), or choose another path. "
                f"Received: filepath={target.filepath!r}"
            )


def _check_directory(target):
    filepath, path = target.filepath, target.path
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise FileExistsError(
            f"The export path {filepath!r} is an existing file, not a "
            "directory: a SavedModel is a directory. Choose another path. "
            f"Received: filepath={filepath!r}"
        )
    if not target.overwrite:
        raise FileExistsError(
            f"The export path {filepath!r} already exists. Pass "
            "overwrite=True to replace an earlier export there, or choose "
            f"another path. Received: filepath={filepath!r}"
        )
    cwd = os.path.abspath(os.getcwd())
    if cwd == path or cwd.startswith(path.rstrip(os.sep) + os.sep):
        raise FileExistsError(
            f"The export path {filepath!r} is the working directory or one "
            "of its parents; an export replaces its directory as a whole. "
            "Export into a new subdirectory, e.g. filepath='exported'. "
            f"Received: filepath={filepath!r}"
        )
    entries = os.listdir(path)
    if entries and not _is_saved_model_export(entries):
        others = sorted(set(entries) - _SAVED_MODEL_ENTRIES)[:5]
        raise FileExistsError(
            f"The export path {filepath!r} is a directory holding files "
            f"that are not a SavedModel export ({', '.join(others)}); "
            "overwrite=True replaces only an earlier export. Export into a "
            "new or empty directory (e.g. a subdirectory), or remove it "
            f"yourself. Received: filepath={filepath!r}"
        )


def _is_saved_model_export(entries):
    """Whether a directory holding `entries` is an earlier export."""
    if MARKER in entries:
        return True
    return "saved_model.pb" in entries and set(entries) <= _SAVED_MODEL_ENTRIES


def write(target, produce):
    """Write an export through a staging folder; `produce`'s result.

    `produce(staged)` writes the artifact at `staged` (the target's own
    base name inside a new hidden folder beside it: a file, or a
    directory for a SavedModel) and checks it, raising if it must not be
    kept. Then the target is checked again and the artifact replaces it
    as one unit (`replace`). The staging folder is removed in every case.
    """
    parent = os.path.dirname(target.path)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(target.path)
    staging = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    try:
        result = produce(os.path.join(staging, base))
        check(target)  # again: it may have changed meanwhile
        replace(
            [
                (os.path.join(staging, os.path.basename(name)), name)
                for name in target.files
            ]
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def replace(moves):
    """Move a staged export into place as one unit.

    `moves` lists `(staged, target)` pairs, the path a runtime opens last
    (OpenVINO's `.xml` after its `.bin`; a SavedModel directory alone).
    A single file replaces its target atomically (`os.replace`).
    Otherwise every existing target is first moved aside into a new
    hidden folder beside it (`.NAME.*.old`), the opened one first; then
    the staged paths are moved in, the opened one last; then the folder
    aside is removed. So at every moment the opened path is either
    absent (loading fails) or part of a complete export, the old one or
    the new one: an interruption never leaves a loadable mix of old and
    new files.

    On an error the new paths are moved back and the old ones restored.
    If that fails too (the disk is gone), the previous export is left in
    the folder aside, and the error says where.

    Raises:
        OSError: A move failed (after the rollback above).
    """
    staged, opened = moves[-1]
    if len(moves) == 1 and not os.path.isdir(staged):
        os.replace(staged, opened)
        return
    present = [t for _, t in reversed(moves) if os.path.lexists(t)]
    aside = None
    if present:
        aside = tempfile.mkdtemp(
            prefix=f".{os.path.basename(opened)}.",
            suffix=".old",
            dir=os.path.dirname(opened),
        )
    set_aside, placed = [], []
    try:
        for target in present:  # the opened one first
            old = os.path.join(aside, os.path.basename(target))
            os.replace(target, old)
            set_aside.append((old, target))
        for source, target in moves:  # the opened one last
            os.replace(source, target)
            placed.append((source, target))
    except BaseException as error:
        _roll_back(placed, set_aside, aside, error)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _roll_back(placed, set_aside, aside, error):
    """Undo `replace`'s moves; on failure, say where the old export is."""
    try:
        for source, target in reversed(placed):
            os.replace(target, source)
        for old, target in reversed(set_aside):  # the opened one last
            os.replace(old, target)
    except OSError:
        error.add_note(
            f"The previous export could not be moved back; it is kept in "
            f"{aside!r}."
        )
        return
    if aside is not None:
        os.rmdir(aside)
