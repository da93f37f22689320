"""Profiles and configuration plumbing.

One environment variable, ``IDCLAB_PROFILE``, picks the scale of everything:

* ``smoke`` -- CI and nbmake: tiny sizes, a handful of steps, seconds per chapter; checks mechanics, not quality;
* ``toy``   -- the default and the rendered book: the Shapes world and shapes-clip, minutes on 2 CPU cores;
* ``paper`` -- the papers' data and hyperparameters on a GPU (needs the downloads).

Each method's own config dataclass lives next to its model (``idclab/models/*.py``), with the papers' defaults and a
cited source per field; this module holds what they share: the profile helper, the device helper and JSON
(de)serialisation of frozen dataclasses, which travel next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch

PROFILES = ("smoke", "toy", "lite", "paper")
DEFAULT_PROFILE = "toy"

T = TypeVar("T")


def get_profile(profile: str | None = None, *, form: str | None = None) -> str:
    """The active profile: ``profile`` if given, else ``$IDCLAB_PROFILE``, else ``form``, else ``toy``.

    ``form`` is the value of a chapter's Colab form field (``IDCLAB_PROFILE = "toy"  # @param [...]`` in its first
    cell): the reader's choice, which the environment variable overrides so that CI runs every chapter in ``smoke``.
    """
    for what, value in (("profile", profile), ("the form's IDCLAB_PROFILE", form)):
        if value is not None and value.strip().lower() not in PROFILES:
            raise ValueError(f"Unknown {what} {value!r}; choose one of {PROFILES}.")
    env = os.environ.get("IDCLAB_PROFILE", "").strip().lower()
    if profile is None and env and env not in PROFILES:
        raise ValueError(f"Unknown profile {env!r} in $IDCLAB_PROFILE; choose one of {PROFILES} "
                         f"(e.g. export IDCLAB_PROFILE=toy), or unset it.")
    value = profile if profile is not None else env or form or DEFAULT_PROFILE
    return value.strip().lower()


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA, else Apple's MPS, else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """A one-line description for notebooks ("cuda: NVIDIA T4, 15.0 GiB" or "cpu: 2 threads")."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"cuda: {props.name}, {props.total_memory / 2**30:.1f} GiB"
    return f"{device.type}: {torch.get_num_threads()} threads"


def to_dict(config: Any) -> dict:
    """A dataclass config as a JSON-able dict, with its class name so it can be rebuilt."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"Expected a dataclass config, got {type(config).__name__}.")
    return {"__class__": type(config).__name__, **dataclasses.asdict(config)}


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a dataclass config from :func:`to_dict`'s output; refuses another class or unknown fields."""
    data = dict(data)
    name = data.pop("__class__", cls.__name__)
    if name != cls.__name__:
        raise ValueError(f"This config is a {name}, not a {cls.__name__}: the checkpoint belongs to another stage/model.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"Unknown {cls.__name__} fields {sorted(unknown)}: the checkpoint comes from another version.")
    for key, value in data.items():  # JSON turns tuples into lists
        if isinstance(value, list) and isinstance(fields[key].default, tuple):
            data[key] = tuple(value)
    return cls(**data)


def save_json(obj: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
