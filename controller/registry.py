"""The model registry: versions with lineage, optimization, and signed bundles.

Files live in a file store (``_files``: the data directory's ``models/`` or the
controller's database) under ``{name}/{version}/`` (model, eval and calibration sets;
``variants/{variant}/`` for per-class files); rows in the store carry signature,
labels, metrics and the optimization report. A version becomes a bundle (manifest +
model, TUF-signed) the first time it is deployed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgefleet.contract import (
    MANIFEST_MAX_BYTES,
    InvalidRequest,
    Manifest,
    NotFoundError,
    OptimizationError,
    RegistryError,
    TargetTrust,
    TensorSpec,
    bundle_paths,
    datatypes,
)
from edgefleet.contract.features import INPUT_KINDS
from edgefleet.contract.files import atomic_write
from edgefleet.contract.names import NAME
from edgefleet.optimizer import (
    TASKS,
    OptimizeTarget,
    Samples,
    detect_task,
    inspect_model,
    inspect_tflite,
    is_tflite,
    load_samples,
    optimize_for_classes,
    optimize_samples,
    optimize_tflite,
)

from ._bundle_data import Runner, bundle_data, runner
from ._files import DirectoryFiles, FileStore
from .signing import TrustRepository
from .store import Store

__all__ = ["Registry", "load_datasets"]

_KINDS = (*INPUT_KINDS, "mask", "skip")

_MODEL_FILE = "model.onnx"
_TFLITE_FILE = "model.tflite"
log = logging.getLogger(__name__)


def _write_model(directory: Path, model: bytes) -> tuple[Path, dict[str, Any], bool]:
    """Write a model file into ``directory`` and read its signature: ``(path, signature,
    is_tflite)``.

    Raises:
        InvalidRequest: not a loadable ONNX or ``.tflite`` model (``directory`` is removed).
    """
    tflite = is_tflite(model)  # a LiteRT flatbuffer, else ONNX
    path = directory / (_TFLITE_FILE if tflite else _MODEL_FILE)
    atomic_write(path, model)
    try:
        signature = inspect_tflite(path) if tflite else inspect_model(path)
    except Exception as exc:
        shutil.rmtree(directory, ignore_errors=True)
        kind = ".tflite" if tflite else "ONNX"
        raise InvalidRequest(f"not a loadable {kind} model: {exc}") from exc
    unserved = datatypes.unserved_inputs(signature["inputs"])
    if unserved:  # a device could install it, then answer every request with an error
        shutil.rmtree(directory, ignore_errors=True)
        raise InvalidRequest(f"inputs {', '.join(unserved)}: devices cannot be fed these "
                         f"datatypes over the inference protocol (they take "
                         f"{', '.join(sorted(datatypes.SERVED))}); export the model with "
                         "inputs of one of those")
    return path, signature, tflite


def load_datasets(data: bytes, signature: dict[str, Any], *, kind: str,
                  stored: bool = False) -> Samples:
    """Read an eval or calibration ``.npz`` and check it against a model's inputs (keys =
    input names, ``x`` for a single-input model, ``y`` = labels; see
    ``edgefleet.optimizer.load_samples``). ``stored``: data registered earlier, whose
    dtypes are converted where they safely can be (earlier releases took float64).

    Raises:
        InvalidRequest: naming the input and what was expected.
    """
    return load_samples(data, signature, what=f"{kind} set", cast=stored)


def _check_runs(run: Callable[[], Runner], samples: Samples, kind: str) -> None:
    """The model must run on the data's first sample: refused now, not at deploy.

    Args:
        run: gives the model's runner (opened once, on first use).

    Raises:
        InvalidRequest: the model fails on it (with the runtime's reason).
    """
    try:
        outputs = run()(samples.feed(0))
    except Exception as exc:  # OptimizationError from the runner, whatever the runtime
        raise InvalidRequest(f"{kind} set: the model fails on sample 0: {exc}") from exc
    bad = [n for n, v in outputs.items() if v.dtype.kind == "f" and not np.all(np.isfinite(v))]
    if bad:
        raise InvalidRequest(f"{kind} set: the model's outputs {bad} are not finite on sample 0")


def _describe(signature: dict[str, Any], task: str | None,
              input_kinds: dict[str, str] | None) -> dict[str, Any]:
    """Check what the user said the model is, against its signature.

    Raises:
        InvalidRequest: an unknown task, input or input kind.
    """
    if task and task not in TASKS:
        raise InvalidRequest(f"task {task!r}: expected one of {', '.join(TASKS)}")
    names = [i["name"] for i in signature["inputs"]]
    for name, kind in (input_kinds or {}).items():
        if name not in names:
            raise InvalidRequest(f"input_kinds: {name!r} is not an input of the model ({names})")
        if kind not in _KINDS:
            raise InvalidRequest(f"input_kinds: {name!r}: kind {kind!r}, expected one of "
                             f"{', '.join(_KINDS)}")
    return {"task": task or "", "input_kinds": dict(input_kinds or {})}


class Registry:
    """Model versions, their files, optimization and bundling.

    Args:
        store: the controller's store.
        repo: the TUF repository bundles are signed into.
        models: the folder of the model files, or a file store keeping them.
        work_dir: a local folder for scratch files (staged uploads, optimizer outputs);
            default: inside ``models`` when it is a folder, else the system's temp dir.

    A version's ``file`` (in the store's rows) is the file's path when the files are in
    a folder, else its key in the file store; ``local_file`` gives a path either way.
    """

    def __init__(self, store: Store, repo: TrustRepository, models: Path | FileStore, *,
                 work_dir: Path | None = None) -> None:
        self.store = store
        self.repo = repo
        self.files: FileStore = DirectoryFiles(models) if isinstance(models, Path) else models
        self.models_dir = models if isinstance(models, Path) else None
        if work_dir is None and self.models_dir is not None:
            work_dir = self.models_dir / ".work"
        self.work_dir = work_dir
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _scratch(self, prefix: str) -> Iterator[Path]:
        """A local folder for the block, removed after it."""
        work = Path(tempfile.mkdtemp(dir=self.work_dir, prefix=prefix))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _ref(self, key: str) -> str:
        """What a row keeps for the file at ``key`` (see the class docstring)."""
        return str(self.files.local_path(key)) if self.files.local else key

    def local_file(self, ref: str) -> Path:
        """A file on this machine with the content of a row's ``file``.

        Raises:
            NotFoundError: the file store has no such file.
        """
        path = Path(ref)
        if self.files.local or path.is_absolute():  # (a folder's path, as rows kept it)
            return path
        return self.files.local_path(ref)

    def register(self, name: str, model: bytes, *, labels: list[str] | None = None,
                 eval_npz: bytes | None = None, calibration_npz: bytes | None = None,
                 metrics: dict[str, Any] | None = None,
                 hardware_classes: list[str] | None = None,
                 security_release: bool = False, task: str | None = None,
                 input_kinds: dict[str, str] | None = None) -> dict[str, Any]:
        """Add a new version of ``name`` from ONNX or ``.tflite`` bytes.

        Eval and calibration data are checked against the model's inputs here (names,
        dtypes, ranks, fixed dimensions) and the model must run on their first sample,
        so data that could never make a smoke test is refused now, not at deploy.

        Args:
            hardware_classes: the device classes it is for (none: any); signed into the
                bundle, so other devices refuse it.
            security_release: raise the release counter: devices that have run this
                version healthy refuse every earlier version afterwards, even when a
                compromised controller orders a rollback to one.
            task: what the model does (``edgefleet.optimizer.TASKS``; none: detected
                from its outputs when obvious), which decides how drift is profiled.
            input_kinds: input name -> what it holds (image, audio, tokens, tabular,
                stats, mask, skip) where detection from the signature would be wrong.

        Raises:
            InvalidRequest: bad name, not a loadable model, bad datasets (naming the input
                and what was expected), an unknown task or input kind.
        """
        NAME.check(name, "model name", error=InvalidRequest)
        for hw in hardware_classes or []:
            NAME.check(hw, "hardware class", error=InvalidRequest)
        with self._scratch(f"register-{name}-") as stage:
            path, signature, tflite = _write_model(stage, model)
            runtime = "litert" if tflite else "onnxruntime"
            signature.update(_describe(signature, task, input_kinds))
            opened = functools.cache(lambda: runner(path, runtime))  # one session for both
            data: dict[str, bytes] = {}
            for kind, raw in (("eval", eval_npz), ("calibration", calibration_npz)):
                if raw is None:
                    continue
                _check_runs(opened, load_datasets(raw, signature, kind=kind), kind)
                data[f"{kind}.npz"] = raw
            counter = self._counter(name) + int(security_release)
            return self._add(name, path, signature, labels or [], metrics or {}, parent=None,
                             variant="fp32", report=None, hardware_classes=hardware_classes,
                             release_counter=max(counter, 1), runtime=runtime, data=data)

    def _counter(self, name: str) -> int:
        """The highest release counter of ``name`` so far (0: a new model)."""
        return self.store.models.release_counter(name)

    def _add(self, name: str, path: Path, signature: dict[str, Any], labels: list[str],
             metrics: dict[str, Any], *, parent: int | None, variant: str,
             report: dict[str, Any] | None, hardware_classes: list[str] | None,
             release_counter: int, runtime: str = "onnxruntime",
             data: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Store a staged model file (and its data files) as the next version of ``name``.

        Under a lock on ``name`` held across replicas: two registrations at once must not
        both write the same version's files."""
        from edgefleet.contract import sha256_file

        digest, size = sha256_file(str(path))
        with self.files.lock(f"model:{name}"):
            version = self.store.models.next_version(name)
            for file_name, content in (data or {}).items():
                self.files.put(f"{name}/{version}/{file_name}", content)
            key = f"{name}/{version}/{path.name}"
            self.files.put_file(key, path)
            self.store.models.add_model(
                name=name, version=version, parent=parent, variant=variant, runtime=runtime,
                file=self._ref(key), sha256=digest, size_bytes=size, signature=signature,
                labels=labels, metrics=metrics, report=report,
                hardware_classes=list(hardware_classes or []), release_counter=release_counter)
        return self.store.models.get_model(name, version)

    def dataset(self, name: str, version: int, kind: str,
                signature: dict[str, Any] | None = None) -> Samples | None:
        """The eval/calibration set of a version or, failing that, of its ancestors, read
        for ``signature`` (default: the version's own).

        Raises:
            InvalidRequest: the data does not fit ``signature`` (a variant with other inputs).
        """
        row: dict[str, Any] | None = self.store.models.get_model(name, version)
        signature = signature or (row or {}).get("signature") or {}
        while row is not None:
            key = f"{name}/{row['version']}/{kind}.npz"
            if self.files.exists(key):
                return load_datasets(self.files.get(key), signature, kind=kind, stored=True)
            row = self.store.models.get_model(name, row["parent"]) if row["parent"] else None
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
            InvalidRequest: malformed hardware class names.
        """
        row = self.store.models.get_model(name, version)
        if row["runtime"] not in ("onnxruntime", "litert"):
            raise OptimizationError(f"{name}:{version} is a {row['runtime']} model; the "
                                    "optimizer takes ONNX and .tflite models",
                                    reason="unsupported")
        if row["runtime"] == "litert" and hardware_classes:
            raise OptimizationError(f"{name}:{version} is a .tflite model: per-class variants "
                                    "are made from ONNX models", reason="unsupported")
        evalset = self.dataset(name, version, "eval")
        calib = self.dataset(name, version, "calibration")
        if evalset is None:
            raise RegistryError(f"{name}:{version} has no eval set; register it with one",
                                reason="missing_eval_set")
        target = dataclasses.replace(target,
                                     task=target.task or row["signature"].get("task", ""))
        with self._scratch(f"optimize-{name}-{version}-") as work:
            if hardware_classes:
                eval_x = evalset.single_input()
                calib_x = calib.single_input() if calib is not None else eval_x
                if eval_x is None or calib_x is None or evalset.labels is None:
                    raise OptimizationError(
                        f"{name}:{version}: per-class variants are made for single-input "
                        "classifiers with labelled data in rows; optimize without "
                        "--hardware-class for this model", reason="unsupported")
                return self._optimize_for_classes(
                    name, row, calib_x, {"x": eval_x, "y": evalset.labels}, work, target,
                    progress, hardware_classes)
            source = self.local_file(row["file"])
            if row["runtime"] == "litert":
                result = optimize_tflite(source, evalset, work, target, progress=progress)
            else:
                result = optimize_samples(source, calib or evalset, evalset, work,
                                          target, progress=progress)
            report = dict(result.report)
            variant = "int8" if result.shipped == "int8" else "fp32"
            return self._add_child(name, row, Path(result.shipped_path), work, variant=variant,
                                   accuracy=(report.get(variant) or {}).get("accuracy"),
                                   report=report)

    def _add_child(self, name: str, row: dict[str, Any], source: Path, work: Path, *,
                   variant: str, accuracy: float | None,
                   report: dict[str, Any]) -> dict[str, Any]:
        """Register an optimizer's output as the next version of ``name``, child of ``row``."""
        tflite = source.suffix == ".tflite"
        staged = work / (_TFLITE_FILE if tflite else "shipped.onnx")
        shutil.copyfile(source, staged)
        signature = {**(inspect_tflite(staged) if tflite else inspect_model(staged)),
                     "task": row["signature"].get("task", ""),
                     "input_kinds": row["signature"].get("input_kinds", {})}
        return self._add(name, staged, signature, row["labels"],
                         {"accuracy": accuracy}, parent=row["version"], variant=variant,
                         report=report, hardware_classes=row.get("hardware_classes"),
                         release_counter=max(self._counter(name), 1),
                         runtime="litert" if tflite else "onnxruntime")

    def _optimize_for_classes(self, name: str, row: dict[str, Any], calib_x: np.ndarray,
                              evalset: dict[str, np.ndarray], work: Path,
                              target: OptimizeTarget, progress: Callable[[str], None] | None,
                              classes: list[str]) -> dict[str, Any]:
        plan = optimize_for_classes(self.local_file(row["file"]), calib_x, evalset["x"],
                                    evalset["y"], work, classes, target, progress)
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
        base = self.store.models.get_model(name, version)
        row = dict(base) if not variant else {**base, **self._variant(name, version, variant),
                                              "variant": variant}
        model_file = PurePosixPath(row["file"]).name
        manifest_path, model_target = bundle_paths(name, version, model_file, variant)
        signed = self.repo.targets.signed.targets.get(manifest_path)
        if row["bundled"] and signed is not None and signed.length <= MANIFEST_MAX_BYTES:
            return manifest_path
        if row["bundled"]:  # signed by an earlier release with its data inline: too big
            log.info("re-signing %s with its data in files", manifest_path)
        model_bytes = self.local_file(row["file"]).read_bytes()
        classes = list(row.get("hardware_classes") or [])
        files, entries, smoke, labels = self._data_files(name, version, base, row)
        manifest = Manifest(
            name=name, version=version, runtime=row["runtime"], model_file=model_file,
            model_sha256=row["sha256"], model_length=row["size_bytes"],
            inputs=[TensorSpec(**t) for t in row["signature"]["inputs"]],
            outputs=[TensorSpec(**t) for t in row["signature"]["outputs"]],
            labels=labels,
            compatibility={"hardware_classes": classes, "min_agent_version": "0.1.0"},
            parent=base["parent"], variant=row["variant"], files=entries, smoke=smoke,
            task=base["signature"].get("task") or detect_task(row["signature"]))
        encoded = manifest.encode()
        if len(encoded) > MANIFEST_MAX_BYTES:
            raise RegistryError(f"the manifest of {name}:{version} would be {len(encoded):,} "
                                f"bytes, above the {MANIFEST_MAX_BYTES:,}-byte cap",
                                reason="manifest_too_large")
        trust = TargetTrust(model=name, version=version, hardware_classes=classes,
                            release_counter=int(base.get("release_counter") or 1)).custom()
        base_path = manifest_path.rsplit("/", 1)[0]
        targets = {manifest_path: encoded, model_target: model_bytes,
                   **{f"{base_path}/{n}": data for n, data in files.items()}}
        self.repo.add_targets(targets, custom=dict.fromkeys(targets, trust))
        if variant:
            self.store.models.mark_variant_bundled(name, version, variant)
        else:
            self.store.models.mark_bundled(name, version)
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
            InvalidRequest: bad variant name or classes, a model that does not load, or
                classes already covered by another variant of this version.
        """
        self.store.models.get_model(name, version)
        NAME.check(variant, "variant name", error=InvalidRequest)
        if variant in ("manifest.json",):
            raise InvalidRequest(f"variant name {variant!r} is reserved")
        if not hardware_classes:
            raise InvalidRequest("a variant needs at least one hardware class")
        for hw in hardware_classes:
            NAME.check(hw, "hardware class", error=InvalidRequest)
        taken = {c for v in self.variants(name, version) for c in v["hardware_classes"]}
        if taken & set(hardware_classes):
            raise InvalidRequest(f"classes {sorted(taken & set(hardware_classes))} already have a "
                             f"variant of {name}:{version}")
        from edgefleet.contract import sha256_file

        with self._scratch(f"variant-{name}-{version}-") as stage:
            path, signature, tflite = _write_model(stage, model)
            digest, size = sha256_file(str(path))
            key = f"{name}/{version}/variants/{variant}/{path.name}"
            self.files.put_file(key, path)
        row = {"name": name, "version": version, "variant": variant,
               "runtime": "litert" if tflite else "onnxruntime", "file": self._ref(key),
               "sha256": digest, "size_bytes": size, "signature": signature,
               "hardware_classes": list(hardware_classes), "report": report,
               "bundled": False, "created_at": time.time()}
        self.store.models.add_variant(row)
        return row

    def variants(self, name: str, version: int) -> list[dict[str, Any]]:
        return self.store.models.variants(name, version)

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

    def _data_files(self, name: str, version: int, base: dict[str, Any],
                    row: dict[str, Any]) -> tuple[dict[str, bytes], list[Any], dict[str, Any],
                                                   list[str]]:
        """The bundle's smoke, profile and labels files (see ``_bundle_data``); a part
        that cannot be made is left out with the reason, never failing the bundle."""
        signature = row["signature"]
        sets: dict[str, Samples | None] = {}
        why = ""
        for kind in ("eval", "calibration"):
            try:
                sets[kind] = self.dataset(name, version, kind, signature)
            except ValueError as exc:  # a variant whose inputs differ from the data's
                log.warning("%s:%s %s: %s", name, version, row["variant"], exc)
                sets[kind], why = None, str(exc)
        reference = [s for s in (sets["eval"], sets["calibration"]) if s is not None]
        try:
            run: Runner | None = runner(self.local_file(row["file"]), row["runtime"])
        except OptimizationError as exc:  # e.g. a variant for another provider's ops
            log.warning("%s:%s %s: %s", name, version, row["variant"], exc)
            run = None
        files, entries, smoke, labels = bundle_data(
            run=run, smoke_samples=sets["eval"] or sets["calibration"], reference=reference,
            signature=signature, variant=row["variant"], model_bytes=int(row["size_bytes"]),
            task=base["signature"].get("task") or detect_task(signature),
            input_kinds=base["signature"].get("input_kinds") or {},
            labels=list(base["labels"]))
        if why and not smoke:
            smoke = {"skipped": f"the version's data does not fit this file: {why}"}
        return files, entries, smoke, labels

    def get(self, name: str, version: int) -> dict[str, Any]:
        """Raises: NotFoundError."""
        return self.store.models.get_model(name, version)


