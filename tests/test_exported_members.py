"""Each package's public surface is what its ``__all__`` says, and nothing is missing."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "edgefleet.contract": {
        "COMMAND_KEYS_FIELD", "CTL_STATE", "MAX_CHUNK_BYTES", "PREFIX", "Ack", "Birth",
        "MANIFEST_MAX_BYTES", "SMOKE_MAX_BYTES", "BundleFile",
        "ChunkResponse", "Clock", "DDSketch",
        "Command", "CompatibilityError", "Death", "DesiredState", "DeviceTopic",
        "EdgefleetError", "ExpiredError", "FetchError", "FetchRequest", "InputError",
        "IntegrityError", "InvalidRequest", "JobState", "JobStatus", "Manifest", "ManualClock",
        "MessageError",
        "ModelError", "ModelLoadError", "ModelRef", "NotFoundError", "OptimizationError",
        "RegistryError", "RollbackError", "SignatureError", "Signed", "SmokeTestError", "Summary",
        "SystemClock", "TargetTrust", "TensorSpec", "TransportError", "TrustError", "bundle_paths",
        "device_topic", "device_wildcard", "parse_device_topic", "sha256_file",
        "BLOB_PREFIX", "blob_filter", "blob_topic", "parse_blob_topic", "valid_sha256",
        "FEATURE_BATCH_SIGNED", "batch_leaves"},
    "edgefleet.agent": {
        "Agent", "AgentConfig", "BundleUpdater", "ChunkFetcher", "ChunkSource",
        "HttpFetcher", "InferenceServer", "InstalledModel", "JobSlots", "ModelStore",
        "OnnxRuntime",
        "Prediction", "Runtime", "TelemetryBuffer", "VerifiedBundle", "available_runtimes",
        "load_config", "summarize"},
    "edgefleet.optimizer": {
        "Evaluation", "GateDecision", "MethodChoice", "OptimizationResult", "OptimizeTarget",
        "PruneStats", "choose_method", "decide_gates", "evaluate", "inspect_model", "optimize",
        "prune_array", "prune_model", "reference_profile", "inspect_tflite", "is_tflite",
        "onnx_to_tflite", "quantize_tflite", "run_tflite", "time_tflite", "Candidate",
        "ClassChoice", "ClassPlan", "choose_for_class", "optimize_for_classes", "Samples",
        "TASKS", "TfliteRunner", "detect_task", "external_data_files", "inline_external_data",
        "input_kind", "load_samples", "profile_model", "optimize_samples", "optimize_tflite",
        "refuse_quantized"},
    "edgefleet.simulations.zoo": {"ZOO_NAMES", "ZooModel", "build_zoo"},
    "edgefleet.controller": {
        "FleetController", "RolloutPolicy", "Settings", "Store", "TrustExpiry",
        "TrustRepository", "init_keys", "select_devices"},
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_surface_is_pinned(module):
    mod = importlib.import_module(module)
    assert set(mod.__all__) == PUBLIC[module]
    for name in mod.__all__:
        assert getattr(mod, name) is not None


def test_agent_imports_nothing_controller_side():
    import subprocess
    import sys

    code = ("import sys, edgefleet.agent, edgefleet.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('fastapi', 'sqlalchemy', 'uvicorn', 'amqtt', 'onnx') "
            "or m.startswith(('edgefleet.controller', 'edgefleet.optimizer', "
            "'onnxruntime.quantization'))]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
