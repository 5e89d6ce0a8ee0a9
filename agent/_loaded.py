"""What the agent holds in memory about the model it serves and a health window in
progress, and what one inference gives back."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from edgefleet.contract import DesiredState, ModelRef

from ._windows import DriftSpec
from .health import HealthPolicy
from .models import InstalledModel
from .runtime import Runtime

__all__ = ["Loaded", "Prediction", "Trial"]


@dataclasses.dataclass(frozen=True)
class Loaded:
    """An installed model with its runtime session, ready to serve."""

    installed: InstalledModel
    runtime: Runtime
    # worked out once for the inference path: the ref it answers with, the input a
    # bare array is fed to, the class names and the drift spec (None: the bundle has no
    # usable profile)
    ref: ModelRef = dataclasses.field(init=False)
    first_input: str = dataclasses.field(init=False)
    labels: list[str] = dataclasses.field(init=False)
    drift: DriftSpec | None = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        installed = self.installed
        object.__setattr__(self, "ref", installed.ref)
        object.__setattr__(self, "first_input", self.runtime.inputs[0].name)
        object.__setattr__(self, "labels", installed.labels())
        object.__setattr__(self, "drift", DriftSpec.from_manifest(installed.manifest,
                                                                  installed.profile()))


@dataclasses.dataclass
class Trial:
    """A health window in progress (mirrored in state.json for restarts)."""

    desired: DesiredState
    policy: HealthPolicy
    started_at: float
    baseline_p95: float | None
    count: int = 0
    errors: int = 0
    # the newest latencies only: a long window at a high rate must not grow memory
    latencies: collections.deque[float] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=4096))


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One inference: the outputs by name, the model that answered, how long it took and,
    for a classifier, the top label."""

    outputs: dict[str, np.ndarray]
    model: ModelRef
    latency_ms: float
    top: str | None
