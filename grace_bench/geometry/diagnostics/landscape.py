"""``landscape``: 1D/2D loss landscape along filter-normalised directions, or θ0→θ interpolation (resumable)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grace_bench.errors import UserError
from grace_bench.geometry.config import DataConfig, NameOf, setting
from grace_bench.geometry.registry import register

DEFAULT_RANGES = {"1d": "-1:1:21", "2d": "-1:1:11", "interp": "0:1:11"}


@dataclass
class LandscapeConfig(DataConfig):
    """Settings of the loss landscape (``geometry.landscape``)."""

    mode: str = setting("1d", "1d or 2d slice along random directions, or interp (reference -> checkpoint)",
                        choices=("1d", "2d", "interp"))
    group: str = setting("vision", "parameters the directions move (default vision)")
    xrange: str | None = setting(None, "coordinates: START:STOP:NUM or a comma list; write --range=-0.5:0.5:11 when "
                                       "it starts with '-' (default: 1d -1:1:21, 2d -1:1:11, interp 0:1:11)",
                                 flag="--range")
    yrange: str | None = setting(None, "y coordinates for 2d (default: as --range)", flag="--range-y")
    fresh: bool = setting(False, "discard a saved partial grid and its directions", hashed=False)

    def ref_use(self) -> str:
        return "required" if self.mode == "interp" else "never"

    def axes_text(self) -> tuple[str, str | None]:
        """The x and y coordinate texts with the mode's defaults filled in (y None unless 2d)."""
        x = self.xrange or DEFAULT_RANGES.get(self.mode, "-1:1:21")
        return x, (self.yrange or x) if self.mode == "2d" else None

    def numeric(self) -> dict[str, Any]:
        out = super().numeric()
        out["xrange"], out["yrange"] = self.axes_text()
        return out

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["xrange"], out["yrange"] = self.axes_text()
        return out

    def check(self, name_of: NameOf) -> None:
        from grace_bench.geometry.ranges import parse_range

        x, y = self.axes_text()
        for name, text in (("xrange", x), ("yrange", y)):
            if text is not None and not parse_range(text, name_of(name)):
                raise UserError(f"{name_of(name)} holds no coordinate; use START:STOP:NUM or a comma list")


def run_landscape(inp) -> tuple[dict, dict]:
    import shutil

    import numpy as np

    from grace_bench.eval.context import classifier_for
    from grace_bench.geometry.landscape import (
        filter_normalized_direction,
        interpolation,
        landscape,
        load_directions,
        save_directions,
    )
    from grace_bench.geometry.losses import select_params
    from grace_bench.geometry.ranges import parse_range

    cfg: LandscapeConfig = inp.config
    clip = inp.clip
    clf = classifier_for(clip, inp.data.suite, inp.data.spec, device=inp.device, progress=inp.progress).eval()
    state = inp.state_dir
    if cfg.fresh and state is not None and state.exists():
        shutil.rmtree(state)
    x_text, y_text = cfg.axes_text()
    xs = parse_range(x_text, "xrange")
    meta = {"checkpoint": clip.fingerprint(), "config_hash": inp.settings_hash}
    grid_path = state / "grid.npz" if state is not None else None
    arrays: dict[str, np.ndarray] = {}
    payload: dict[str, Any] = {"data": inp.data.info, "mode": cfg.mode}
    if cfg.mode == "interp":
        ref = inp.ref
        res = interpolation(clf, inp.data.batches, ref.model.state_dict(), clip.model.state_dict(), xs,
                            module=clf.model, cache_path=grid_path, meta=meta, progress=inp.progress)
        payload.update(ref={"spec": ref.spec, "fingerprint": ref.fingerprint(), "arch": ref.arch},
                       path="(1-a)*theta0 + a*theta over every floating-point state-dict entry; "
                            "zero-shot head of the checkpoint's text tower, fixed along the path")
    else:
        params = select_params(clf, cfg.group)
        count = 1 if cfg.mode == "1d" else 2
        seeds = [cfg.seed + i for i in range(count)]
        dir_path = state / "directions.npz" if state is not None else None
        if dir_path is not None and dir_path.exists():
            directions = load_directions(dir_path, params, count)
        else:
            directions = [filter_normalized_direction(params, seed=s) for s in seeds]
            if dir_path is not None:
                save_directions(dir_path, directions, {"seeds": seeds})
        axes = [xs] if count == 1 else [xs, parse_range(y_text, "yrange")]
        res = landscape(clf, inp.data.batches, params, directions, axes, cache_path=grid_path, meta=meta,
                        progress=inp.progress)
        for i, d in enumerate(directions):
            for name, t in d.items():
                arrays[f"direction_{i}/{name}"] = t.float().numpy()
        payload.update(group=cfg.group, direction_seeds=seeds,
                       directions="filter-normalised Gaussian (Li et al. 2018); zero for 0-d/1-d parameters; "
                                  "stored in the NPZ as direction_<i>/<parameter>")
    if not res["complete"]:  # pragma: no cover - only when interrupted without an exception
        raise UserError("the landscape grid is incomplete; run it again with the same settings to resume it")
    for i, axis in enumerate(res["axes"]):
        arrays[f"axis_{i}"] = np.asarray(axis)
    arrays["loss"] = res["loss"]
    arrays["accuracy"] = res["accuracy"]
    payload.update(axes=[np.asarray(a).tolist() for a in res["axes"]], shape=list(res["loss"].shape),
                   loss_at_origin=_value_at_zero(res), meta=res["meta"])
    return payload, arrays


def _value_at_zero(res: dict) -> float | None:
    import numpy as np

    idx = []
    for axis in res["axes"]:
        hits = np.flatnonzero(np.isclose(np.asarray(axis), 0.0))
        if not hits.size:
            return None
        idx.append(int(hits[0]))
    return float(res["loss"][tuple(idx)])


register("landscape", LandscapeConfig, run_landscape, order=3,
         help="1D/2D loss landscape (filter-normalised directions) or θ0→θ interpolation",
         study={"micro": {"mode": "1d", "n": 256, "xrange": "-1:1:21"},
                "quick": {"mode": "1d", "n": 32, "xrange": "-1:1:5"}, "paper": {"mode": "1d"}})
