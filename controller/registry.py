"""The model registry: versions with lineage, optimization, and signed bundles.

Files live under ``data_dir/models/{name}/{version}/`` (model, eval and calibration
sets); rows in the store carry signature, labels, metrics and the optimization
report. A version becomes a bundle (manifest + model, TUF-signed) the first time it
is deployed.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from edgefleet.contract import (
    Manifest,
    NotFoundError,
    OptimizationError,
    RegistryError,
    TargetTrust,
    TensorSpec,
    bundle_paths,
)
from edgefleet.contract.files import atomic_write
from edgefleet.optimizer import (
    OptimizeTarget,
    inspect_model,
    inspect_tflite,
    is_tflite,
    optimize,
    optimize_for_classes,
    reference_profile,
    run_tflite,
)

from ._tables import variants
from .signing import TrustRepository
from .store import Store

__all__ = ["Registry", "load_datasets"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MODEL_FILE = "model.onnx"
_TFLITE_FILE = "model.tflite"
log = logging.getLogger(__name__)
_SMOKE_SAMPLES = 16
_SMOKE_MIN_ACCURACY = 0.75


def _write_model(directory: Path, model: bytes) -> tuple[Path, dict[str, Any], bool]:
    """Write a model file into ``directory`` and read its signature: ``(path, signature,
    is_tflite)``.

    Raises:
        ValueError: not a loadable ONNX or ``.tflite`` model (``directory`` is removed).
    """
    tflite = is_tflite(model)  # a LiteRT flatbuffer, else ONNX
    path = directory / (_TFLITE_FILE if tflite else _MODEL_FILE)
    atomic_write(path, model)
    try:
        signature = inspect_tflite(path) if tflite else inspect_model(path)
    except Exception as exc:
        shutil.rmtree(directory, ignore_errors=True)
        kind = ".tflite" if tflite else "ONNX"
        raise ValueError(f"not a loadable {kind} model: {exc}") from exc
    return path, signature, tflite


def load_datasets(data: bytes, *, need_labels: bool) -> dict[str, np.ndarray]:
    """Read an ``.npz`` upload (``x``, and ``y`` for an eval set).

    Raises:
        ValueError: not an npz, or missing/mismatched arrays.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"not a valid .npz file: {exc}") from exc
    if "x" not in arrays:
        raise ValueError("the .npz must hold an array named 'x'")
    if need_labels and ("y" not in arrays or len(arrays["y"]) != len(arrays["x"])):
        raise ValueError("an eval set needs 'y' with one label per row of 'x'")
    return arrays


class Registry:
    """Model versions, their files, optimization and bundling."""

    def __init__(self, store: Store, repo: TrustRepository, models_dir: Path) -> None:
        self.store = store
        self.repo = repo
        self.models_dir = models_dir

    def _dir(self, name: str, version: int) -> Path:
        return self.models_dir / name / str(version)

    def register(self, name: str, model: bytes, *, labels: list[str] | None = None,
                 eval_npz: bytes | None = None, calibration_npz: bytes | None = None,
                 metrics: dict[str, Any] | None = None,
                 hardware_classes: list[str] | None = None,
                 security_release: bool = False) -> dict[str, Any]:
        """Add a new version of ``name`` from ONNX bytes.

        Args:
            hardware_classes: the device classes it is for (none: any); signed into the
                bundle, so other devices refuse it.
            security_release: raise the release counter: devices that have run this
                version healthy refuse every earlier version afterwards, even when a
                compromised controller orders a rollback to one.

        Raises:
            ValueError: bad name, not a loadable ONNX model, bad datasets.
        """
        if not _NAME.match(name):
            raise ValueError("model name: letters, digits, '.', '_', '-' (max 64)")
        datasets = {}
        if eval_npz is not None:
            datasets["eval"] = load_datasets(eval_npz, need_labels=True)
        if calibration_npz is not None:
            datasets["calibration"] = load_datasets(calibration_npz, need_labels=False)
        directory = self._dir(name, self.store.next_version(name))
        directory.mkdir(parents=True, exist_ok=True)
        path, signature, tflite = _write_model(directory, model)
        for kind, raw in (("eval", eval_npz), ("calibration", calibration_npz)):
            if raw is not None:
                atomic_write(directory / f"{kind}.npz", raw)
        for hw in hardware_classes or []:
            if not _NAME.match(hw):
                raise ValueError(f"hardware class {hw!r}: letters, digits, '.', '_', '-'")
        counter = self._counter(name) + int(security_release)
        return self._add(name, path, signature, labels or [], metrics or {}, parent=None,
                         variant="fp32", report=None, hardware_classes=hardware_classes,
                         release_counter=max(counter, 1),
                         runtime="litert" if tflite else "onnxruntime")

    def _counter(self, name: str) -> int:
        """The highest release counter of ``name`` so far (0: a new model)."""
        return max((int(r.get("release_counter") or 1) for r in self.store.list_models()
                    if r["name"] == name), default=0)

    def _add(self, name: str, path: Path, signature: dict[str, Any], labels: list[str],
             metrics: dict[str, Any], *, parent: int | None, variant: str,
             report: dict[str, Any] | None, hardware_classes: list[str] | None,
             release_counter: int, runtime: str = "onnxruntime") -> dict[str, Any]:
        from edgefleet.contract import sha256_file

        version = self.store.next_version(name)
        final = self._dir(name, version) / path.name
        if path != final:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), final)
        digest, size = sha256_file(str(final))
        self.store.add_model(name=name, version=version, parent=parent, variant=variant,
                             runtime=runtime, file=str(final), sha256=digest,
                             size_bytes=size, signature=signature, labels=labels,
                             metrics=metrics, report=report,
                             hardware_classes=list(hardware_classes or []),
                             release_counter=release_counter)
        return self.store.get_model(name, version)

    def dataset(self, name: str, version: int, kind: str) -> dict[str, np.ndarray] | None:
        """The eval/calibration set of a version or, failing that, of its ancestors."""
        row: dict[str, Any] | None = self.store.get_model(name, version)
        while row is not None:
            path = self._dir(name, row["version"]) / f"{kind}.npz"
            if path.exists():
                return load_datasets(path.read_bytes(), need_labels=kind == "eval")
            row = self.store.get_model(name, row["parent"]) if row["parent"] else None
        return None

    def optimize(self, name: str, version: int, target: OptimizeTarget,
                 progress: Callable[[str], None] | None = None, *,
                 hardware_classes: list[str] | None = None) -> dict[str, Any]:
        """Quantize/prune a version into a child version carrying the report.

        Without ``hardware_classes`` the child's file is what the gates ship (int8 or
        fp32). With them the child's own file is the fp32 model, and every class whose
        best variant differs (int8 ONNX, a ``.tflite``) gets it as a variant bound to
        the class; the report lists each class's choice and why.

        Raises:
            NotFoundError: unknown version.
            RegistryError: the version has no eval or calibration set.
            OptimizationError: the optimizer failed.
            ValueError: malformed hardware class names.
        """
        row = self.store.get_model(name, version)
        if row["runtime"] != "onnxruntime":
            raise OptimizationError(f"{name}:{version} is a {row['runtime']} model; the "
                                    "optimizer works on ONNX models", reason="unsupported")
        evalset = self.dataset(name, version, "eval")
        calib = self.dataset(name, version, "calibration")
        if evalset is None:
            raise RegistryError(f"{name}:{version} has no eval set; register it with one",
                                reason="missing_eval_set")
        calib_x = calib["x"] if calib is not None else evalset["x"][:200]
        work = self.models_dir / name / f".optimize-{version}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            if hardware_classes:
                return self._optimize_for_classes(name, row, calib_x, evalset, work, target,
                                                  progress, hardware_classes)
            result = optimize(Path(row["file"]), calib_x, evalset["x"], evalset["y"], work,
                              target, progress=progress)
            report = dict(result.report)
            variant = "int8" if result.shipped == "int8" else "fp32"
            return self._add_child(name, row, Path(result.shipped_path), work, variant=variant,
                                   accuracy=report.get(variant, {}).get("accuracy"),
                                   report=report)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _add_child(self, name: str, row: dict[str, Any], source: Path, work: Path, *,
                   variant: str, accuracy: float | None,
                   report: dict[str, Any]) -> dict[str, Any]:
        """Register an optimizer's output as the next version of ``name``, child of ``row``."""
        staged = work / "shipped.onnx"
        shutil.copyfile(source, staged)
        return self._add(name, staged, inspect_model(staged), row["labels"],
                         {"accuracy": accuracy}, parent=row["version"], variant=variant,
                         report=report, hardware_classes=row.get("hardware_classes"),
                         release_counter=max(self._counter(name), 1))

    def _optimize_for_classes(self, name: str, row: dict[str, Any], calib_x: np.ndarray,
                              evalset: dict[str, np.ndarray], work: Path,
                              target: OptimizeTarget, progress: Callable[[str], None] | None,
                              classes: list[str]) -> dict[str, Any]:
        plan = optimize_for_classes(Path(row["file"]), calib_x, evalset["x"], evalset["y"],
                                    work, classes, target, progress)
        child = self._add_child(name, row, work / plan.optimization.report["files"]["fp32"],
                                work, variant="fp32",
                                accuracy=plan.report["candidates"]["fp32"]["accuracy"],
                                report=plan.report)
        for variant, cls in plan.classes.items():
            self.add_variant(name, child["version"], plan.files[variant].read_bytes(),
                             variant=variant, hardware_classes=cls,
                             report=plan.report["candidates"][variant])
        return child

    def ensure_bundle(self, name: str, version: int, variant: str = "") -> str:
        """Sign the bundle of a version, or of one of its variants (once); returns the
        manifest's target path.

        Raises:
            NotFoundError: unknown version or variant.
        """
        base = self.store.get_model(name, version)
        row = dict(base) if not variant else {**base, **self._variant(name, version, variant),
                                              "variant": variant}
        model_file = Path(row["file"]).name
        manifest_path, model_target = bundle_paths(name, version, model_file, variant)
        if row["bundled"]:
            return manifest_path
        model_bytes = Path(row["file"]).read_bytes()
        classes = list(row.get("hardware_classes") or [])
        run = self._runner(row)  # one session for the smoke test and the profile
        manifest = Manifest(
            name=name, version=version, runtime=row["runtime"], model_file=model_file,
            model_sha256=row["sha256"], model_length=row["size_bytes"],
            inputs=[TensorSpec(**t) for t in row["signature"]["inputs"]],
            outputs=[TensorSpec(**t) for t in row["signature"]["outputs"]],
            labels=list(base["labels"]),
            compatibility={"hardware_classes": classes, "min_agent_version": "0.1.0"},
            smoke_test=self._smoke_test(name, version, run, row["variant"]),
            reference_profile=self._profile(name, version, run, list(base["labels"])),
            parent=base["parent"], variant=row["variant"])
        trust = TargetTrust(model=name, version=version, hardware_classes=classes,
                            release_counter=int(base.get("release_counter") or 1)).custom()
        self.repo.add_targets({manifest_path: manifest.encode(), model_target: model_bytes},
                              custom={manifest_path: trust, model_target: trust})
        if variant:
            with self.store.engine.begin() as c:
                c.execute(variants.update().where(
                    (variants.c.name == name) & (variants.c.version == version)
                    & (variants.c.variant == variant)).values(bundled=True))
        else:
            self.store.mark_bundled(name, version)
        return manifest_path

    # -- per-class variants -----------------------------------------------------------
    def add_variant(self, name: str, version: int, model: bytes, *, variant: str,
                    hardware_classes: list[str],
                    report: dict[str, Any] | None = None) -> dict[str, Any]:
        """Give a version another file for some hardware classes (e.g. int8 where it is
        faster, a ``.tflite`` for LiteRT devices). Devices of those classes get it; its
        signed trust data binds it to them, so other devices refuse it.

        Raises:
            NotFoundError: unknown version.
            ValueError: bad variant name or classes, a model that does not load, or
                classes already covered by another variant of this version.
        """
        self.store.get_model(name, version)
        if not _NAME.match(variant) or variant in ("manifest.json",):
            raise ValueError(f"variant name {variant!r}: letters, digits, '.', '_', '-'")
        if not hardware_classes or not all(_NAME.match(c) for c in hardware_classes):
            raise ValueError("a variant needs hardware classes (letters, digits, '.', '_', '-')")
        taken = {c for v in self.variants(name, version) for c in v["hardware_classes"]}
        if taken & set(hardware_classes):
            raise ValueError(f"classes {sorted(taken & set(hardware_classes))} already have a "
                             f"variant of {name}:{version}")
        directory = self._dir(name, version) / "variants" / variant
        directory.mkdir(parents=True, exist_ok=True)
        path, signature, tflite = _write_model(directory, model)
        from edgefleet.contract import sha256_file

        digest, size = sha256_file(str(path))
        row = {"name": name, "version": version, "variant": variant,
               "runtime": "litert" if tflite else "onnxruntime", "file": str(path),
               "sha256": digest, "size_bytes": size, "signature": signature,
               "hardware_classes": list(hardware_classes), "report": report,
               "bundled": False, "created_at": time.time()}
        with self.store.engine.begin() as c:
            c.execute(variants.insert().values(**row))
        return row

    def variants(self, name: str, version: int) -> list[dict[str, Any]]:
        with self.store.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(
                sa.select(variants).where((variants.c.name == name)
                                          & (variants.c.version == version))
                .order_by(variants.c.variant))]

    def _variant(self, name: str, version: int, variant: str) -> dict[str, Any]:
        for v in self.variants(name, version):
            if v["variant"] == variant:
                return v
        raise NotFoundError(f"{name}:{version} has no variant {variant!r}")

    def manifest_for(self, name: str, version: int, hardware_class: str,
                     runtimes: list[str] | None = None) -> str:
        """The bundle a device of ``hardware_class`` gets (its variant, else the default),
        signed on first use; returns its manifest path.

        ``runtimes`` are those the device reported; a variant needing another runtime
        (a ``.tflite`` on a device without LiteRT) is passed over for the default."""
        chosen = next((v["variant"] for v in self.variants(name, version)
                       if hardware_class in v["hardware_classes"]
                       and (runtimes is None or v["runtime"] in runtimes)), "")
        return self.ensure_bundle(name, version, chosen)

    @staticmethod
    def _runner(row: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
        """Run a version's model on a batch with its own runtime (first output)."""
        path = Path(row["file"])
        if row["runtime"] == "litert":
            return lambda x: run_tflite(path, x)
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda x: np.asarray(sess.run(None, {name: x})[0])

    def _smoke_test(self, name: str, version: int, run: Callable[[np.ndarray], np.ndarray],
                    variant: str) -> dict[str, Any]:
        data = self.dataset(name, version, "eval") or self.dataset(name, version, "calibration")
        if data is None:
            return {}
        x = data["x"][:_SMOKE_SAMPLES]
        out = run(x)
        smoke: dict[str, Any] = {"input": x.tolist(), "expected": out.tolist(),
                                 "atol": 0.05 if variant == "int8" else 1e-3}
        if "y" in data and out.ndim == 2:
            # labelled samples: the model must also get most of them right
            smoke["labels"] = [int(v) for v in data["y"][:_SMOKE_SAMPLES]]
            smoke["min_accuracy"] = _SMOKE_MIN_ACCURACY
        return smoke

    def _profile(self, name: str, version: int, run: Callable[[np.ndarray], np.ndarray],
                 labels: list[str]) -> dict[str, Any]:
        """The drift reference: eval and calibration inputs, and the model's predictions
        on them ({} without data, or when the model's first output is not class scores)."""
        sets = [d["x"] for kind in ("eval", "calibration")
                if (d := self.dataset(name, version, kind)) is not None]
        if not sets:
            return {}
        x = np.concatenate([s.reshape(len(s), *sets[0].shape[1:]) for s in sets])
        out = run(x)
        preds = out.argmax(axis=1) if out.ndim == 2 and out.shape[1] > 1 else None
        try:
            return reference_profile(x, preds, labels=labels or None)
        except ValueError as exc:  # too few samples, non-finite inputs
            log.warning("no drift reference for %s:%s: %s", name, version, exc)
            return {}

    def get(self, name: str, version: int) -> dict[str, Any]:
        """Raises: NotFoundError."""
        return self.store.get_model(name, version)


