"""Identity guard: score each generated window against the reference face; report the windows whose ArcFace
similarity drops below a threshold, or make them again anchored on the reference and keep the better attempt.

The guard itself is model-free: it judges per-frame similarities (``None`` where no face was found) window by
window and keeps a :class:`GuardReport`. Where the similarities come from and how a window is made again belongs to
each family:

* **MEMO** (clip by clip, each clip conditioned on the previous clip's frames and the temporal memory, which is how
  identity drifts): a window is a clip. :class:`ClipGuard` is handed to the sampler
  (``motion.memo_sampler.MemoSampler.clips(guard=...)``), which asks it after every decoded clip; a retry makes the
  clip again as a first clip (past frames = the reference, memory rebuilt from it) with a new noise draw, and the
  next clips continue from the attempt kept. Similarity: MEMO's own identity model (insightface SCRFD + ArcFace
  R100, already loaded for the conditioning embedding) against the reference embedding (:func:`memo_frame_scorer`).
* **HunyuanPortrait** (all windows denoised jointly at every step, windows shifting each step): a window is a run of
  ``window`` output frames, scored with the sampler's ArcFace (``hunyuan_portrait.animate.identity_scores``). A
  retry generates that frame range again as a short sequence of its own (with ``context`` real driving frames on
  each side, a new seed and stronger appearance guidance; ``hunyuan_portrait.reanchor``), cross-fades it into the
  neighbours over ``blend_frames`` frames at each inner edge and keeps it when it scores higher
  (:func:`guard_windows`, :func:`guard_portrait`).

Threshold 0 turns the guard off: nothing is scored or changed (the run is the unguarded one, bit for bit).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

ACTIONS = ("re-anchor", "report")
STATISTICS = ("mean", "min")
SEED_MODULUS = 2 ** 63


@dataclass(frozen=True)
class IdentityGuard:
    """What the guard does (the option node's inputs)."""

    threshold: float = 0.5      # window similarity below this fails; 0 turns the guard off
    action: str = "re-anchor"   # "report": only list the failing windows; "re-anchor": also make them again
    max_retries: int = 1        # attempts per failing window after the first
    statistic: str = "mean"     # the window's score: mean or min of its frames' similarities
    guidance_boost: float = 0.5  # added per retry (MEMO: cfg; HunyuanPortrait: appearance guidance)
    blend_frames: int = 4       # HunyuanPortrait: cross-fade frames at each inner edge of a regenerated range

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"identity guard: input 'threshold' is {self.threshold}: use 0 (off) to 1")
        if self.action not in ACTIONS:
            raise ValueError(f"identity guard: input 'action' is {self.action!r}: use one of {list(ACTIONS)}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"identity guard: input 'statistic' is {self.statistic!r}: use one of {list(STATISTICS)}")
        if self.max_retries < 0:
            raise ValueError(f"identity guard: input 'max_retries' is {self.max_retries}: use 0 or more")
        if self.blend_frames < 0:
            raise ValueError(f"identity guard: input 'blend_frames' is {self.blend_frames}: use 0 or more")

    @property
    def active(self) -> bool:
        return self.threshold > 0

    @property
    def retries(self) -> int:
        """Retries per failing window (0 when the action only reports)."""
        return self.max_retries if self.action == "re-anchor" else 0

    def fails(self, score: Optional[float]) -> bool:
        """A window fails when it has a face and its score is below the threshold (a window without any face is
        reported, not regenerated: there is nothing to compare attempts by)."""
        return self.active and score is not None and score < self.threshold


def window_score(values: Sequence[Optional[float]], statistic: str = "mean") -> Optional[float]:
    """Mean or min of the frames' similarities that were measured; None when no frame had a face."""
    found = [float(v) for v in values if v is not None]
    if not found:
        return None
    return float(np.mean(found) if statistic == "mean" else np.min(found))


def retry_seed(seed: int, window: int, attempt: int) -> int:
    """The noise seed of retry ``attempt`` (1, 2, ...) of window ``window``: fixed for a run seed, different from
    the run's own draw and from every other window's retries."""
    return (int(seed) + 1_000_003 * int(attempt) + 7_919 * (int(window) + 1)) % SEED_MODULUS


def _round(v: Optional[float]) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


@dataclass
class WindowRecord:
    """One window: its frame range (inclusive), the score of every attempt (0: the first), which was kept."""

    index: int
    first: int
    last: int
    scores: list = field(default_factory=list)  # Optional[float] per attempt
    kept: int = 0
    action: str = "ok"  # ok | no face | reported | re-anchored | kept original

    @property
    def before(self) -> Optional[float]:
        return self.scores[0] if self.scores else None

    @property
    def after(self) -> Optional[float]:
        return self.scores[self.kept] if self.scores else None

    def best(self) -> int:
        """The attempt with the highest score (ties: the earliest; unmeasured attempts never win)."""
        best, best_score = 0, -math.inf
        for i, v in enumerate(self.scores):
            if v is not None and v > best_score:
                best, best_score = i, v
        return best

    def to_dict(self) -> dict:
        return {"window": self.index, "frames": [self.first, self.last], "before": _round(self.before),
                "after": _round(self.after), "attempts": len(self.scores), "kept": self.kept, "action": self.action,
                "scores": [_round(v) for v in self.scores]}

    def line(self) -> str:
        frames = f"frames {self.first}-{self.last}"
        if self.action == "no face":
            return f"{frames}: no face found"
        text = f"{frames}: {self.before:.3f}"
        if self.action == "re-anchored":
            return f"{text} -> {self.after:.3f} re-anchored (attempt {self.kept} of {len(self.scores) - 1} retries)"
        if self.action == "kept original":
            tried = ", ".join("-" if v is None else f"{v:.3f}" for v in self.scores[1:])
            return f"{text} below the threshold; retries scored {tried}: kept the original"
        if self.action == "reported":
            return f"{text} below the threshold (reported)"
        return f"{text} ok"


@dataclass
class GuardReport:
    """Every window the guard looked at, in frame order."""

    guard: IdentityGuard
    family: str
    windows: list = field(default_factory=list)  # WindowRecord
    notes: list = field(default_factory=list)

    @property
    def flagged(self) -> list:
        """Windows whose first attempt fell below the threshold."""
        return [w for w in self.windows if self.guard.fails(w.before)]

    def to_dict(self) -> dict:
        g = self.guard
        return {"identity_guard": {"family": self.family, "threshold": g.threshold, "action": g.action,
                                   "statistic": g.statistic, "max_retries": g.max_retries,
                                   "guidance_boost": g.guidance_boost},
                "flagged": [[w.first, w.last] for w in self.flagged],
                "re_anchored": [[w.first, w.last] for w in self.windows if w.action == "re-anchored"],
                "windows": [w.to_dict() for w in self.windows], "notes": list(self.notes)}

    def json(self) -> str:
        return json.dumps(self.to_dict())

    def summary(self) -> str:
        g = self.guard
        flagged = self.flagged
        head = (f"identity guard ({self.family}, {g.statistic} similarity < {g.threshold:g}, {g.action}): "
                f"{len(flagged)} of {len(self.windows)} windows below the threshold")
        fixed = sum(w.action == "re-anchored" for w in self.windows)
        if g.action == "re-anchor" and flagged:
            head += f", {fixed} re-anchored"
        return "\n".join([head] + [w.line() for w in self.windows] + list(self.notes))


# ---- MEMO: a window is a clip; the sampler asks the guard after every decoded clip ------------------------------------


@dataclass(frozen=True)
class RetryPlan:
    seed: int
    guidance_scale: float


FrameScorer = Callable[[torch.Tensor], list]  # IMAGE (n, H, W, 3) in [0, 1] -> per-frame similarity or None


class ClipGuard:
    """The guard of a clip-by-clip sampler (the ``guard`` protocol of ``MemoSampler.clips``).

    ``score_frames``: per-frame similarities of an IMAGE batch; ``seed`` / ``guidance_scale``: the run's, from which
    the retries' seeds and boosted scales follow; ``clip_length``: frames per clip; ``frames_total``: the frames that
    are kept (the last clip is trimmed to the audio: only those frames are scored and reported).
    """

    def __init__(self, guard: IdentityGuard, score_frames: FrameScorer, seed: int, guidance_scale: float,
                 clip_length: int, frames_total: Optional[int] = None, family: str = "MEMO"):
        self.guard, self.score_frames = guard, score_frames
        self.seed, self.guidance_scale = int(seed), float(guidance_scale)
        self.clip_length, self.frames_total = int(clip_length), frames_total
        self.report = GuardReport(guard, family)
        self._records: dict[int, WindowRecord] = {}

    def check(self, clip: int, attempt: int, frames: torch.Tensor) -> Optional[RetryPlan]:
        """Score attempt ``attempt`` of clip ``clip`` (``frames (F, 3, H, W)`` in [0, 1]); a plan for the next
        attempt, or None when the clip passes, the retries are spent or the action only reports."""
        first = clip * self.clip_length
        count = frames.shape[0]
        if self.frames_total is not None:
            count = max(0, min(count, self.frames_total - first))
        if attempt == 0:
            record = WindowRecord(clip, first, first + count - 1)
            self._records[clip] = record
            self.report.windows.append(record)
        record = self._records[clip]
        score = window_score(self.score_frames(frames[:count].permute(0, 2, 3, 1)), self.guard.statistic) \
            if count else None
        record.scores.append(score)
        if not self.guard.fails(record.before) or not self.guard.fails(score) or attempt >= self.guard.retries:
            return None
        nxt = attempt + 1
        return RetryPlan(retry_seed(self.seed, clip, nxt), self.guidance_scale + self.guard.guidance_boost * nxt)

    def keep(self, clip: int) -> int:
        """The attempt to continue from (the best scored); records the action taken."""
        record = self._records[clip]
        record.kept = record.best() if len(record.scores) > 1 else 0
        record.action = _action(self.guard, record)
        return record.kept


def _action(guard: IdentityGuard, record: WindowRecord) -> str:
    if record.before is None:
        return "no face"
    if not guard.fails(record.before):
        return "ok"
    if len(record.scores) == 1:
        return "reported"
    return "re-anchored" if record.kept > 0 else "kept original"


def memo_frame_scorer(face, face_emb) -> FrameScorer:
    """Per-frame cosine similarity to MEMO's reference embedding with MEMO's identity models (``face``: the loader's
    ``memo.identity.FaceEmbedder``: SCRFD, the largest face, ArcFace R100). A frame without a face scores None."""
    if face is None:
        raise ValueError("the identity guard needs MEMO's identity models: turn on 'identity' on MEMO Loader, or "
                         "disconnect 'identity_guard'")
    ref = np.asarray(face_emb.detach().cpu() if hasattr(face_emb, "detach") else face_emb,
                     dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(ref))
    if norm == 0.0:
        raise ValueError("the identity guard needs a face in input 'reference' (no identity embedding: "
                         "on_missing_face 'uncond' found none); disconnect 'identity_guard' or use a portrait with a "
                         "visible face")
    ref = ref / norm

    def score(images: torch.Tensor) -> list:
        out = []
        for i in range(images.shape[0]):
            emb = np.asarray(face.embed(images[i], input_name="frames", on_missing_face="uncond"),
                             dtype=np.float64).reshape(-1)
            n = float(np.linalg.norm(emb))
            out.append(None if n == 0.0 else float(emb @ ref) / n)
        return out

    return score


def memo_clip_guard(guard: Optional[IdentityGuard], bundle, face_emb, settings, clip_length: int,
                    frames_total: int) -> Optional[ClipGuard]:
    """The MEMO sampler's guard for a run (None when the guard is absent or off)."""
    if guard is None or not guard.active:
        return None
    return ClipGuard(guard, memo_frame_scorer(bundle.face, face_emb), settings.seed, settings.guidance_scale,
                     clip_length, frames_total)


# ---- HunyuanPortrait: windows of the output; a failing range is generated again and spliced in ----------------------


def splice(frames: torch.Tensor, new: torch.Tensor, start: int, blend: int) -> torch.Tensor:
    """``new`` (m, ...) for frames ``start .. start + m - 1`` of ``frames`` (N, ...), cross-faded with the frames
    it replaces over ``blend`` frames at each edge that has a neighbour (weights ``i / (blend + 1)``, linear); the
    other frames of the range are ``new`` as is. Returns the range as it will stand (a new tensor)."""
    m = new.shape[0]
    out = new.clone()
    b = max(0, min(int(blend), m // 2))
    for i in range(b):
        w = (i + 1) / (b + 1)
        if start > 0:
            out[i] = (1 - w) * frames[start + i] + w * new[i]
        if start + m < frames.shape[0]:
            out[m - 1 - i] = (1 - w) * frames[start + m - 1 - i] + w * new[m - 1 - i]
    return out


def guard_windows(guard: IdentityGuard, frames: torch.Tensor, per_frame: list, window: int,
                  regenerate: Callable[[int, int, int], torch.Tensor], score_frames: FrameScorer,
                  family: str = "HunyuanPortrait") -> tuple[torch.Tensor, list, GuardReport]:
    """Judge ``frames (N, ...)`` window by window (``window`` frames from frame 0) on ``per_frame`` similarities.

    A failing window, with action re-anchor: ``regenerate(start, stop, attempt)`` gives frames ``start .. stop - 1``
    made again (attempt 1, 2, ...); each is spliced (:func:`splice`), scored with ``score_frames`` and the best
    attempt stays. ``frames`` is changed in place; returns it, the per-frame similarities after the guard and the
    report. Windows that pass are never touched.
    """
    report = GuardReport(guard, family)
    scores = list(per_frame)
    for index, start in enumerate(range(0, frames.shape[0], window)):
        stop = min(start + window, frames.shape[0])
        record = WindowRecord(index, start, stop - 1, [window_score(scores[start:stop], guard.statistic)])
        report.windows.append(record)
        best_frames, best_scores = None, None
        while guard.fails(record.before) and guard.fails(record.scores[-1]) and len(record.scores) <= guard.retries:
            attempt = len(record.scores)
            candidate = splice(frames, regenerate(start, stop, attempt), start, guard.blend_frames)
            values = score_frames(candidate)
            record.scores.append(window_score(values, guard.statistic))
            if record.best() == attempt:
                best_frames, best_scores = candidate, values
        record.kept = record.best()
        if record.kept > 0:
            frames[start:stop] = best_frames
            scores[start:stop] = best_scores
        record.action = _action(guard, record)
    return frames, scores, report


def require_portrait_scores(bundle, conditions) -> None:
    """The guard scores with the sampler's ArcFace against the reference embedding: both must be there."""
    if bundle.arcface is None or not float(conditions.id_embedding.abs().sum()):
        raise ValueError("the identity guard needs ArcFace and a face in the reference: turn on 'arcface' on "
                         "HunyuanPortrait Loader (and use a reference with a visible face), or disconnect "
                         "'identity_guard'")


def report_windows(guard: IdentityGuard, per_frame: list, window: int, family: str = "HunyuanPortrait",
                   note: Optional[str] = None) -> GuardReport:
    """The report of :func:`guard_windows` without touching any frame (every failing window is reported), e.g. for
    frames already written to a file."""
    reporter = IdentityGuard(**{**guard.__dict__, "action": "report"})
    _, _, report = guard_windows(reporter, torch.empty(len(per_frame)), per_frame, window, None, None, family)
    report.guard = guard
    if note and report.flagged and guard.action == "re-anchor":
        report.notes.append(note)
    return report


def guard_portrait(guard: IdentityGuard, bundle, conditions, settings, seed: int, frames: torch.Tensor,
                   runtime=None, speed=None, resume=None):
    """HunyuanPortrait's guard over the generated crops ``frames (N, S, S, 3)``: the sampler's ArcFace scores,
    then :func:`guard_windows` with :func:`..hunyuan_portrait.reanchor.regenerate_range`. Returns ``(frames,
    IdentityReport after the guard, GuardReport)``. ``resume``: the retries' resume options (from
    ``hunyuan_portrait.resume.guard_scope``: kept until the guard is done, so a cancelled guard continues)."""
    from ..hunyuan_portrait.animate import IdentityReport, identity_scores
    from ..hunyuan_portrait.reanchor import regenerate_range

    window = settings.n_sample_frames
    require_portrait_scores(bundle, conditions)
    first = identity_scores(bundle, conditions, frames, window)
    context = max(guard.blend_frames, settings.overlap)

    def remake(start: int, stop: int, attempt: int) -> torch.Tensor:
        return regenerate_range(bundle, conditions, settings, retry_seed(seed, start // window, attempt), start,
                                stop, context=context, guidance_boost=guard.guidance_boost * attempt,
                                runtime=runtime, speed=speed, resume=resume)

    def score(images: torch.Tensor) -> list:
        return identity_scores(bundle, conditions, images, window).per_frame

    frames, per_frame, report = guard_windows(guard, frames, first.per_frame, window, remake, score)
    return frames, IdentityReport(per_frame=per_frame, window=window), report


__all__ = ["ACTIONS", "STATISTICS", "ClipGuard", "GuardReport", "IdentityGuard", "RetryPlan", "WindowRecord",
           "guard_portrait", "guard_windows", "memo_clip_guard", "memo_frame_scorer", "report_windows",
           "require_portrait_scores", "retry_seed", "splice", "window_score"]
