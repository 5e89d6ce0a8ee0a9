"""The edgefleet exception tree, shared by agent and controller.

Every error edgefleet raises on purpose derives from ``EdgefleetError``; callers can
catch the root or any branch. A value a user gave that is refused (a model file that does
not load, data that does not fit it, a name, a deployment with no device) is
``InvalidRequest``, which is also a ``ValueError``: the API answers it with a 422, while a
plain ``ValueError`` or ``TypeError`` is a programming mistake (a 500).

::

    EdgefleetError
    ├── TrustError                 a bundle or its metadata cannot be trusted
    │   ├── SignatureError         unsigned, unknown key, below threshold
    │   ├── RollbackError          version lower than what is installed
    │   ├── ExpiredError           metadata past its expiry
    │   └── IntegrityError         length or hash does not match what was signed
    ├── TransportError             the broker or a peer did not answer in time
    │   └── FetchError             a chunk or file could not be fetched
    ├── MessageError               a malformed payload from the outside
    ├── ModelError                 a model cannot be loaded or run
    │   ├── ModelLoadError         the runtime refused the file
    │   ├── InputError             a request's tensors do not match the signature
    │   └── SmokeTestError         the model loaded but gave the wrong answer
    ├── CompatibilityError         the bundle is not for this device or agent
    ├── InvalidRequest             a value a user gave is refused (also a ValueError)
    ├── OptimizationError          quantization or pruning could not run
    └── RegistryError              unknown model, version or deployment; conflicts
        └── NotFoundError
"""

from __future__ import annotations

__all__ = [
    "CompatibilityError",
    "EdgefleetError",
    "ExpiredError",
    "FetchError",
    "InputError",
    "IntegrityError",
    "InvalidRequest",
    "MessageError",
    "ModelError",
    "ModelLoadError",
    "NotFoundError",
    "OptimizationError",
    "RegistryError",
    "RollbackError",
    "SignatureError",
    "SmokeTestError",
    "TransportError",
    "TrustError",
]


class EdgefleetError(Exception):
    """Root of every error edgefleet raises on purpose.

    ``reason`` is a short, stable, machine-readable code (``tampered_file``,
    ``untrusted_signature``…) that goes into job status messages and logs.
    """

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TrustError(EdgefleetError):
    reason = "untrusted"


class SignatureError(TrustError):
    reason = "untrusted_signature"


class RollbackError(TrustError):
    reason = "version_rollback"


class ExpiredError(TrustError):
    reason = "expired_metadata"


class IntegrityError(TrustError):
    reason = "tampered_file"


class TransportError(EdgefleetError):
    reason = "transport"


class FetchError(TransportError):
    reason = "fetch_failed"


class MessageError(EdgefleetError):
    reason = "malformed_message"


class ModelError(EdgefleetError):
    reason = "model_error"


class ModelLoadError(ModelError):
    reason = "model_load_failed"


class InputError(ModelError):
    reason = "bad_input"


class SmokeTestError(ModelError):
    reason = "smoke_test_failed"


class CompatibilityError(EdgefleetError):
    reason = "incompatible"


class InvalidRequest(EdgefleetError, ValueError):
    """A value a user gave that is refused; the message names the field and what was
    expected."""

    reason = "invalid"


class OptimizationError(EdgefleetError):
    reason = "optimization_failed"


class RegistryError(EdgefleetError):
    reason = "registry"


class NotFoundError(RegistryError):
    reason = "not_found"
