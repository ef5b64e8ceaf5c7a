"""Layered A/B experiments: the config schema, its validation and the salted-hash assignment.

A unit (user id; the request id when absent) is hashed with each layer's salt into 10 000 buckets.
The experiments of a layer own disjoint bucket ranges, so a unit is in at most one experiment per
layer. Inside an experiment the unit is hashed again with the experiment's salt and the weights
split those 10 000 buckets between arms. An arm overrides the launch defaults (bundle, nprobe);
layers apply in order. Hashing is murmur3 (mmh3): deterministic across processes and machines,
so assignment is sticky without storing anything.

Example (YAML or JSON)::

    version: 3
    bundles: {base: runs/base, crops: runs/crops}
    defaults: {bundle: base}
    layers:
      - name: model
        experiments:
          - name: crops_vs_base
            buckets: [0, 10000]
            arms:
              control: {weight: 50}
              crops: {weight: 50, bundle: crops}
"""

from __future__ import annotations

import bisect
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mmh3
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import CropsError, ErrorKind

BUCKETS = 10_000
_ARM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # it travels in a response header and metric labels
DEFAULT_ARM = "default"


def bucket(unit: str, salt: str) -> int:
    """The unit's bucket in [0, 10 000) for ``salt`` (murmur3 32-bit, unsigned)."""
    return int(mmh3.hash(f"{salt}:{unit}", 0, signed=False)) % BUCKETS


class ArmSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(ge=0)
    bundle: str | None = None
    nprobe: int | None = Field(default=None, ge=1, le=65_536)


class ExperimentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    salt: str | None = None
    buckets: tuple[int, int] = (0, BUCKETS)
    arms: dict[str, ArmSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ExperimentSpec:
        lo, hi = self.buckets
        if not 0 <= lo < hi <= BUCKETS:
            raise ValueError(f"experiment {self.name}: buckets must satisfy 0 <= start < end <= {BUCKETS}")
        if sum(a.weight for a in self.arms.values()) <= 0:
            raise ValueError(f"experiment {self.name}: arm weights sum to 0")
        return self


class LayerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    salt: str | None = None
    experiments: list[ExperimentSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> LayerSpec:
        spans = sorted(e.buckets for e in self.experiments)
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                raise ValueError(f"layer {self.name}: experiments have overlapping bucket ranges")
        return self


class Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bundle: str
    nprobe: int | None = Field(default=None, ge=1, le=65_536)


class ExperimentConfig(BaseModel):
    """The whole A/B config. ``version`` must grow for a hot update to be applied."""

    model_config = ConfigDict(extra="forbid")
    # bounded: it is a Prometheus gauge and a JSON number every reader must represent exactly
    version: int = Field(default=0, ge=0, le=2**53)
    bundles: dict[str, str] = Field(min_length=1)
    defaults: Defaults
    layers: list[LayerSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _refs(self) -> ExperimentConfig:
        for name, path in self.bundles.items():
            if not path or "\x00" in path or len(path) > 4096:
                raise ValueError(f"bundles.{name}: a path of 1..4096 characters without NUL")
        if self.defaults.bundle not in self.bundles:
            raise ValueError(f"defaults.bundle {self.defaults.bundle!r} is not in bundles")
        seen_arms: set[str] = set()
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError("layer names must be unique")
        for layer in self.layers:
            for exp in layer.experiments:
                for arm_name, arm in exp.arms.items():
                    if arm.bundle is not None and arm.bundle not in self.bundles:
                        raise ValueError(f"arm {arm_name}: bundle {arm.bundle!r} is not in bundles")
                    if arm_name in seen_arms or arm_name == DEFAULT_ARM or not _ARM_NAME.match(arm_name):
                        raise ValueError(
                            f"arm name {arm_name!r} must be unique, not 'default', of [A-Za-z0-9_.-]{{1,64}}"
                        )
                    seen_arms.add(arm_name)
        return self


def single_bundle_config(bundle: Path | str) -> ExperimentConfig:
    """The config of a service with one bundle: everything goes to arm ``default``."""
    return ExperimentConfig(version=0, bundles={DEFAULT_ARM: str(bundle)}, defaults=Defaults(bundle=DEFAULT_ARM))


def parse_config(text: str | bytes, *, base_dir: Path | None = None, source: str = "config") -> ExperimentConfig:
    """Parse YAML/JSON text into a validated config; relative bundle paths resolve against base_dir."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CropsError(ErrorKind.CONFIG_INVALID, f"{source}: not YAML/JSON ({str(exc).splitlines()[0]})") from exc
    if not isinstance(raw, dict):
        raise CropsError(ErrorKind.CONFIG_INVALID, f"{source}: must be a mapping")
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()[:3])
        raise CropsError(ErrorKind.CONFIG_INVALID, f"{source}: {errs}") from exc
    if base_dir is not None:
        cfg.bundles = {k: str(p if Path(p).is_absolute() else (base_dir / p).resolve()) for k, p in cfg.bundles.items()}
    return cfg


def load_config_file(path: Path) -> ExperimentConfig:
    if not path.is_file():
        raise CropsError(ErrorKind.NOT_FOUND, f"experiment config {path} does not exist")
    return parse_config(path.read_text(), base_dir=path.resolve().parent, source=str(path))


def dump_config(cfg: ExperimentConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


@dataclass(frozen=True)
class Assignment:
    """Which arm serves a unit: label, bundle name, nprobe and the (layer, experiment, arm) path."""

    arm: str
    bundle: str
    nprobe: int | None
    experiments: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class _CompiledExperiment:
    spec: ExperimentSpec
    salt: str
    bounds: list[int]  # cumulative upper bucket per arm
    arm_names: list[str]


class Assigner:
    """A compiled config: assign(unit) is two murmur3 hashes and two bisects per layer."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self._layers: list[tuple[LayerSpec, str, list[int], list[_CompiledExperiment]]] = []
        self._force: dict[str, tuple[int, _CompiledExperiment]] = {}
        for li, layer in enumerate(cfg.layers):
            exps = sorted(layer.experiments, key=lambda e: e.buckets[0])
            compiled = []
            for exp in exps:
                total = sum(a.weight for a in exp.arms.values())
                cum, bounds = 0.0, []
                for arm in exp.arms.values():
                    cum += arm.weight
                    bounds.append(round(cum / total * BUCKETS))
                bounds[-1] = BUCKETS
                ce = _CompiledExperiment(exp, exp.salt or f"{layer.name}/{exp.name}", bounds, list(exp.arms))
                compiled.append(ce)
                for arm_name in exp.arms:
                    self._force[arm_name] = (li, ce)
            starts = [e.buckets[0] for e in exps]
            self._layers.append((layer, layer.salt or layer.name, starts, compiled))

    @property
    def arm_names(self) -> list[str]:
        return [DEFAULT_ARM, *self._force]

    def assign(self, unit: str, force_arm: str | None = None) -> Assignment:
        """The arm for ``unit``; ``force_arm`` (a QA override, checked by the caller) wins in its layer."""
        if force_arm is not None and force_arm != DEFAULT_ARM and force_arm not in self._force:
            raise CropsError(ErrorKind.INVALID_INPUT, f"unknown arm {force_arm!r}; known: {self.arm_names}")
        bundle, nprobe = self.cfg.defaults.bundle, self.cfg.defaults.nprobe
        labels: list[str] = []
        path: list[tuple[str, str, str]] = []
        forced = self._force.get(force_arm) if force_arm else None
        for li, (layer, salt, starts, exps) in enumerate(self._layers):
            if forced is not None and forced[0] == li:
                exp, arm_name = forced[1], force_arm
            else:
                b = bucket(unit, salt)
                i = bisect.bisect_right(starts, b) - 1
                if i < 0 or b >= exps[i].spec.buckets[1]:
                    continue
                exp = exps[i]
                arm_name = exp.arm_names[bisect.bisect_right(exp.bounds, bucket(unit, exp.salt))]
            assert arm_name is not None
            arm = exp.spec.arms[arm_name]
            if arm.bundle is not None:
                bundle = arm.bundle
            if arm.nprobe is not None:
                nprobe = arm.nprobe
            labels.append(arm_name)
            path.append((layer.name, exp.spec.name, arm_name))
        return Assignment("+".join(labels) or DEFAULT_ARM, bundle, nprobe, tuple(path))

    def arm_table(self) -> dict[str, dict[str, Any]]:
        """Each arm with what it overrides (layer, experiment, weight, bundle, nprobe)."""
        d = self.cfg.defaults
        table: dict[str, dict[str, Any]] = {DEFAULT_ARM: {"bundle": d.bundle, "nprobe": d.nprobe}}
        for layer in self.cfg.layers:
            for exp in layer.experiments:
                for name, arm in exp.arms.items():
                    table[name] = {
                        "layer": layer.name,
                        "experiment": exp.name,
                        "weight": arm.weight,
                        "bundle": arm.bundle or d.bundle,
                        "nprobe": arm.nprobe or d.nprobe,
                    }
        return table

    def summary(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")
