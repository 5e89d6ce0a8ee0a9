"""The edgefleet agent: the daemon on each edge device.

It serves the installed model at once (in-process and over a local KServe v2
endpoint), applies the desired state the controller publishes — pull, verify with
TUF, install atomically, smoke test, switch — keeps the last known good model, and
buffers telemetry in SQLite until the controller has it. It imports the shared
contract and its runtime libraries only.
"""

from ._http_fetch import HttpFetcher
from ._jobs import JobSlots
from .agent import Agent, Prediction
from .config import AgentConfig, load_config
from .models import InstalledModel, ModelStore
from .runtime import OnnxRuntime, Runtime, available_runtimes
from .server import InferenceServer
from .telemetry import TelemetryBuffer, summarize
from .updater import BundleUpdater, ChunkFetcher, ChunkSource, VerifiedBundle

__all__ = [
    "Agent",
    "AgentConfig",
    "BundleUpdater",
    "ChunkFetcher",
    "ChunkSource",
    "HttpFetcher",
    "InferenceServer",
    "InstalledModel",
    "JobSlots",
    "ModelStore",
    "OnnxRuntime",
    "Prediction",
    "Runtime",
    "TelemetryBuffer",
    "VerifiedBundle",
    "available_runtimes",
    "load_config",
    "summarize",
]
