"""Training pairs streamed from shards (shards.py) that never fit one machine: read, checked and cropped as they
arrive, in an order that resumes exactly and does not depend on how many ranks and workers read it.

The order. The training shards (canonical: as `shards.resolve` lists them) are read in passes, each pass a seeded
permutation of them; one after the other, the passes make one endless sequence of shard reads ("occurrences",
numbered g = 0, 1, 2, ...). That sequence is dealt to `lanes` (P) readers: lane l reads occurrences l, l+P,
l+2P, ... . With P dividing the shard count each lane reads whole shards, S/P of them per pass; otherwise the
passes overlap between lanes (each shard is still read once per pass); with fewer shards than lanes each shard
is read as ceil(P/S) parts (rows split by index: every part reads the whole shard and keeps its rows).

A lane's samples: each usable pair gives `crops_per_pair` crops (crops.pair_window; the window and transform are
a pure function of (seed, pass, shard, row, crop)). They wait in a pool of whole pairs cut into `shuffle_crops`
crops; each crop given is the next crop of a pair drawn from the pool by (seed, lane, count) (Lane.batches), and
consecutive crops make a batch. Global batch t is batch t // P of lane t % P; rank r of W takes global batches r,
r+W, r+2W, ... and its DataLoader worker w (of N) every N-th of those, which all come from the lanes congruent to
r + W*w modulo W*N (that must divide P). So the global batch sequence is the same for any number of ranks and
workers that divides P: only which process cuts a batch changes. Every rank's stream is endless (lanes go on into
later passes), so every rank can take the same fixed number of batches per epoch.

The position (`StreamLoader.state_dict`, JSON): per lane its read position (occurrence, row), the pairs in its
pool (each one's place and next crop, re-cut on resume from a re-read of its row), its counters, and the number
of global batches consumed. A resumed stream yields exactly the batches the uninterrupted one would have, on any
process layout whose W*N divides P; another layout starts a new pass, and says so.

Checks on the fly, by check-data's rules (decodable, header pixel limit before decoding, HR exactly 4x LR, large
enough for the patch): `on_bad_sample="skip"` leaves a bad pair out, `"error"` stops with one line naming shard
and row. A shard that cannot be read is retried `retries` times (backoff from `backoff_s`), then skipped or fatal
by the same switch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import numpy as np
import torch

from insanesr_dist.data import loaders, pairs, shards
from insanesr_dist.data.crops import crop_draws, pair_window
from insanesr_dist.data.images import decode_rgb
from insanesr_dist.data.loaders import WindowBatch, collate_windows
from insanesr_dist.data.splits import Splits
from insanesr_dist.errors import UserError

FORMAT = 2  # of the state dict
SHOWN_PROBLEMS = 10  # bad pairs and unreadable shards named one by one; the rest are counted


@dataclasses.dataclass(frozen=True)
class StreamSettings:
    """What a stream's samples are made of. All but the batch size (it only cuts the same crops into other
    batches) and the problem switches are part of its position's fingerprint: a position taken under other
    values cannot be continued exactly."""

    patch_size: int
    batch_size: int
    seed: int = 0
    scale: int = 4
    crops_per_decode: int = 0  # 0: by the pair's size (crops_per_pair)
    shuffle_crops: int = 1024  # crops of the pairs in each lane's pool (memory: at most this many LR+HR windows)
    on_bad_sample: str = "error"
    retries: int = 3
    backoff_s: float = 0.5


class StreamError(Exception):
    """A problem that stops the stream (a bad pair or shard under on_bad_sample="error", or no usable pair at
    all): raised as a one-line UserError in the main process."""


@dataclasses.dataclass
class StreamFailure:
    """What a worker hands over instead of a batch when the stream must stop: its one line, not a traceback."""

    message: str


@dataclasses.dataclass
class StreamBatch:
    """A lane's batch as a worker hands it over: the windows, and the lane's position and problems after it."""

    windows: WindowBatch
    lane: int
    state: dict
    events: list[tuple[str, str]]  # (kind, line): "bad" pairs and "unreadable" shards met since the last batch

    def pin_memory(self, device: Any = None) -> StreamBatch:
        return dataclasses.replace(self, windows=self.windows.pin_memory())


# ---------------------------------------------------------------------------------------------
# Reading and checking


def checked_pair(row: dict, scale: int, patch_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A row's decoded (LR, HR) by check-data's rules; UserError with the problem otherwise."""
    row = {**row, "lr": shards.read_cell(row["lr"]), "hr": shards.read_cell(row["hr"])}
    lr, hr = pairs.decode_pair(row, scale)
    problem = pairs.pair_problem(lr.shape, hr.shape, scale) or pairs.patch_problem(lr.shape, patch_size)
    if problem:
        raise UserError(f"{pairs.cell_name(row, 'hr')}: {problem}")
    return lr, hr


def decoded(where: str, example: dict, scale: int, lr_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """A row's (LR, HR) by check-data's rules ((LR, None) with `lr_only`); UserError naming `where` otherwise."""
    try:
        if lr_only:
            return decode_rgb(shards.read_cell(example["lr"]), pairs.cell_name(example, "lr")), None
        return checked_pair(example, scale)
    except UserError as e:
        raise UserError(f"{where}: {e.message}") from None


def iter_pairs(
    source: shards.Source,
    split: str = "train",
    *,
    scale: int = 4,
    bad: Callable[[str], None],
    retries: int = 3,
    backoff_s: float = 0.5,
    lr_only: bool = False,
) -> Iterator[tuple[str, dict, np.ndarray, np.ndarray | None]]:
    """Every usable pair of a split in canonical order, once: (where, row, LR, HR; HR None with `lr_only`).
    Each bad pair or unreadable shard is one line to `bad`; reading goes on."""
    for where, example in shards.iter_rows(source, split, bad=bad, retries=retries, backoff_s=backoff_s):
        try:
            yield where, example, *decoded(where, example, scale, lr_only)
        except UserError as e:
            bad(e.message)


# ---------------------------------------------------------------------------------------------
# The plan: which shard read each lane makes


@dataclasses.dataclass(frozen=True)
class Plan:
    """The endless sequence of shard reads and its dealing to lanes (see the module's doc)."""

    shards: tuple[int, ...]  # the training shards' indices in the source, canonical order
    start: tuple[int, int]  # (shard, row): the first shard's rows before `row` are held out (validation)
    lanes: int
    seed: int
    first: int = 0  # the occurrence lane 0 starts at (a new pass after a layout change)

    @property
    def parts(self) -> int:
        return 1 if len(self.shards) >= self.lanes else -(-self.lanes // len(self.shards))

    @property
    def pieces(self) -> int:
        return len(self.shards) * self.parts

    def occurrence(self, lane: int, k: int) -> int:
        return self.first + lane + k * self.lanes

    def piece(self, occurrence: int) -> tuple[int, int, int]:
        """(pass, shard, part) an occurrence reads."""
        stream_pass, index = divmod(occurrence, self.pieces)
        shard, part = divmod(int(_order(self.seed, stream_pass, self.pieces)[index]), self.parts)
        return stream_pass, self.shards[shard], part

    def first_row(self, shard: int) -> int:
        return self.start[1] if shard == self.start[0] else 0

    def describe(self) -> str:
        s, p = len(self.shards), self.lanes
        if self.parts > 1:
            return (
                f"{s} shard(s) for {p} lanes: each shard is read as {self.parts} parts split by row index "
                f"(each part reads the whole shard and keeps every {self.parts}th row)"
            )
        if s % p:
            return (
                f"{s} shards for {p} lanes: lanes take whole shards in turn from the sequence of passes, so a "
                "pass's shards are spread unevenly and passes overlap between lanes (each shard is read once per pass)"
            )
        return f"{s} shards for {p} lanes: each lane reads {s // p} whole shard(s) per pass"


@functools.lru_cache(maxsize=64)
def _order(seed: int, stream_pass: int, pieces: int) -> np.ndarray:
    return np.random.default_rng([seed, stream_pass, 0x5EED]).permutation(pieces)


AUTO_CROP_AREAS = 4  # crops_per_decode 0: one crop per this many HR crop areas of the pair...
MAX_AUTO_CROPS = 32  # ...and at most this many


def crops_per_pair(settings: StreamSettings, hr_shape: tuple[int, ...]) -> int:
    """Crops cut from one decoded pair: `crops_per_decode`, or with 0 one per AUTO_CROP_AREAS crop areas of its HR
    (1 to MAX_AUTO_CROPS). A decode costs the same whatever is cut from it, so a large image gives many crops (a
    2K pair 32 at LR patch 32) and a packed tile few (a 480-px tile 4); the pool mixes them."""
    if settings.crops_per_decode:
        return settings.crops_per_decode
    crop = (settings.patch_size * settings.scale) ** 2
    return max(1, min(MAX_AUTO_CROPS, -(-hr_shape[0] * hr_shape[1] // (AUTO_CROP_AREAS * crop))))


def _crop_key(shard: int, row: int, crop: int, settings: StreamSettings) -> int:
    return ((shard << 32) + row) * (settings.crops_per_decode or MAX_AUTO_CROPS) + crop


class Lane:
    """One lane's batches, from a position (its state dict) on."""

    def __init__(
        self, source: shards.Source, plan: Plan, settings: StreamSettings, index: int, state: dict | None
    ) -> None:
        self.source, self.plan, self.settings, self.index = source, plan, settings, index
        state = state or {}
        self.cursor = tuple(state.get("cursor", (0, 0)))  # (occurrence k of this lane, row): the next pair to read
        self.emitted = state.get("emitted", 0)
        self.batches_made = state.get("batches", 0)
        self.counts = dict(state.get("counts", {"bad": 0, "unreadable": 0}))
        self.events: list[tuple[str, str]] = []
        self._pool_keys = np.asarray(state.get("pool", []), np.int64).reshape(-1, 3).tolist()

    def state(self, pool_keys: np.ndarray) -> dict:
        """The position; "pool" (a row (k, row, next crop) per pair in the pool) is an array here (a list per
        batch would cost more than its crops), a list once StreamLoader.state_dict makes it JSON."""
        return {
            "cursor": list(self.cursor),
            "pass": self.plan.piece(self.plan.occurrence(self.index, self.cursor[0]))[0],
            "emitted": self.emitted,
            "batches": self.batches_made,
            "counts": dict(self.counts),
            "pool": pool_keys.copy(),
        }

    def _problem(self, kind: str, line: str) -> None:
        if self.settings.on_bad_sample == "error":
            more = "" if kind == "unreadable" else " (--on-bad-sample skip trains without it)"
            raise StreamError(line + more)
        self.counts[kind] += 1
        self.events.append((kind, line))

    def _rows(self, k: int, start: int):
        """(pass, shard, row, row dict) of the lane's k-th read from row `start`."""
        stream_pass, shard, part = self.plan.piece(self.plan.occurrence(self.index, k))
        start, s = max(start, self.plan.first_row(shard)), self.settings
        for row, example in shards.shard_rows(
            self.source, "train", shard, start, retries=s.retries, backoff_s=s.backoff_s
        ):
            if self.plan.parts == 1 or row % self.plan.parts == part:
                yield stream_pass, shard, row, example

    def _crops(self, example: dict, stream_pass: int, shard: int, row: int, first: int = 0) -> list | None:
        """A row's crops from crop `first` on, last first (the pool takes them from the end); None for a bad
        pair."""
        try:
            lr, hr = checked_pair(example, self.settings.scale, self.settings.patch_size)
        except UserError as e:
            # Named and counted in the stream's first pass only, which meets each row once: later passes meet the
            # same rows again (under "error" the first meeting has stopped the run).
            if stream_pass == self.plan.first // self.plan.pieces:
                self._problem("bad", f"{self.source.shards()[shard]} row {row}: {e.message}")
            return None
        s = self.settings
        crops = range(crops_per_pair(s, hr.shape) - 1, first - 1, -1)
        draws = (crop_draws(s.seed, stream_pass, _crop_key(shard, row, c, s)) for c in crops)
        return [pair_window(lr, hr, s.patch_size, s.scale, d) for d in draws]

    def _pairs(self, going_on=None):
        """((k, row), crops) of every usable pair from the cursor on, the cursor moved past each before it is
        given. `going_on`: the cursor's read, opened before the cursor's row (by `_restored`)."""
        k, row = self.cursor
        dry: set[tuple[int, int]] = set()  # (shard, part) read whole without a usable pair since the last one
        while True:
            usable = False
            try:
                rows, going_on = going_on or self._rows(k, row), None
                for stream_pass, shard, r, example in rows:
                    if r < row:
                        continue  # consumed after the pool's last row: not cut again
                    crops = self._crops(example, stream_pass, shard, r)
                    if crops is None:
                        continue
                    usable = True
                    self.cursor = (k, r + 1)
                    yield (k, r), crops
            except GeneratorExit:  # closed (at exit too, when the names below may already be gone): no problem
                raise
            except shards.ShardUnreadable as e:
                self._problem("unreadable", str(e))
            if usable:
                dry.clear()
            elif row == 0:
                dry.add(self.plan.piece(self.plan.occurrence(self.index, k))[1:])
            if len(dry) == self.plan.pieces:  # every shard tried: going on would spin without a batch
                raise StreamError(
                    f"{self.source.text}: no usable pair in any of its {len(self.plan.shards)} training shard(s); "
                    "see the lines above, or run insanesr-dist check-data on it"
                )
            k, row = k + 1, 0
            self.cursor = (k, 0)

    def _restored(self):
        """The pool of the state, in its order: each pair's crops left, cut again from a re-read of its row (a
        row that can no longer be read loses its crops: the pool refills before it gives more); and the cursor's
        read when it holds pool rows, left open after them so that `_pairs` goes on with it rather than fetching
        its rows again."""
        wanted: dict[int, dict[int, int]] = {}
        for k, r, c in self._pool_keys:
            wanted.setdefault(k, {})[r] = c
        crops, going_on = {}, None
        for k, rows in sorted(wanted.items()):
            read = self._rows(k, min(rows))
            try:
                for stream_pass, shard, r, example in read:
                    if r in rows:
                        crops[(k, r)] = self._crops(example, stream_pass, shard, r, rows[r])
                    if r >= max(rows):
                        break
            except shards.ShardUnreadable as e:
                self._problem("unreadable", str(e))
            if k == self.cursor[0]:
                going_on = read
            else:
                read.close()
        pool = [([k, r, c], crops[(k, r)]) for k, r, c in self._pool_keys if crops.get((k, r))]
        return pool, going_on

    def batches(self) -> Iterator[StreamBatch]:
        """Batches of crops, each the next crop of a pair drawn from the pool. The pool holds whole pairs: it
        refills when the pairs in it were cut into fewer than `shuffle_crops` crops in all, and a pair leaves
        when its last crop is drawn. So it holds about shuffle_crops / crops-per-pair pairs at any time, from
        about as many before, and a resume re-reads about as many pairs as a fresh start reads to fill it (with
        a pool of crops refilled crop by crop, a pair's last crop lingers for many pool-fulls)."""
        s = self.settings
        capacity = max(1, s.shuffle_crops)
        restored, going_on = self._restored()
        keys = np.zeros((max(capacity, len(restored)), 3), np.int64)  # (k, row, next crop) of each pooled pair
        keys[: len(restored)] = np.array([key for key, _ in restored], np.int64).reshape(-1, 3)
        pool = [crops for _, crops in restored]  # each pair's crops left, last first
        total = sum(key[2] + len(crops) for key, crops in restored)  # the pooled pairs' crops in all
        out, fresh = [], self._pairs(going_on)
        while True:
            while total < capacity:
                (k, r), crops = next(fresh)
                keys[len(pool)] = (k, r, 0)
                pool.append(crops)
                total += len(crops)
            slot = crop_draws(s.seed, (1 << 40) + self.index, self.emitted)[0] % len(pool)
            out.append(pool[slot].pop())
            keys[slot, 2] += 1
            if not pool[slot]:  # used up: its next crop is its count; the pool's last pair takes its slot
                total -= int(keys[slot, 2])
                pool[slot], keys[slot] = pool[-1], keys[len(pool) - 1]
                pool.pop()
            self.emitted += 1
            if len(out) == s.batch_size:
                self.batches_made += 1
                events, self.events = self.events, []
                yield StreamBatch(collate_windows(out), self.index, self.state(keys[: len(pool)]), events)
                out = []


# ---------------------------------------------------------------------------------------------
# The dataset a DataLoader iterates, and the loader the trainer iterates


def _fingerprint(source: shards.Source, start: tuple[int, int], settings: StreamSettings) -> str:
    """What a lane's crops depend on: the shards, the held-out head, the crop settings (the batch size only
    cuts the same crops into other batches, and the problem switches change nothing that is kept)."""
    crops = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    for name in ("batch_size", "on_bad_sample", "retries", "backoff_s"):
        crops.pop(name)
    what = [source.shards(), list(start), source.lr_from_hr, crops]
    return hashlib.sha256(json.dumps(what, default=str).encode()).hexdigest()[:16]


class TrainStream(torch.utils.data.IterableDataset):
    """One rank's endless training batches (StreamBatch), for a DataLoader with `num_workers` workers and
    batch_size=None (StreamLoader makes it). `batches`: global batches consumed before (a resumed position)."""

    def __init__(
        self,
        source: shards.Source,
        settings: StreamSettings,
        plan: Plan,
        *,
        rank: int,
        world_size: int,
        num_workers: int,
        batches: int = 0,
        lane_states: dict[int, dict] | None = None,
    ) -> None:
        self.source, self.settings, self.plan = source, settings, plan
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.batches, self.lane_states = batches, lane_states or {}

    def __iter__(self) -> Iterator[StreamBatch | StreamFailure]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        consumers = self.world_size * workers
        t = self.batches + self.rank + self.world_size * worker  # this process's first global batch
        lanes: dict[int, Iterator[StreamBatch]] = {}
        try:
            while True:
                lane = t % self.plan.lanes
                if lane not in lanes:
                    lanes[lane] = Lane(
                        self.source, self.plan, self.settings, lane, self.lane_states.get(lane)
                    ).batches()
                yield next(lanes[lane])
                t += consumers
        except GeneratorExit:  # closed (at exit too, when the names below may already be gone): no problem
            raise
        except StreamError as e:
            yield StreamFailure(str(e))


def _as_is(item):
    return item


def _as_json(lane_state: dict) -> dict:
    return {**lane_state, "pool": np.asarray(lane_state.get("pool", []), np.int64).tolist()}


def merge_states(states: list[dict]) -> dict:
    """One position from every rank's `StreamLoader.state_dict()` (taken after the same number of batches):
    each rank's holds only its own lanes."""
    merged = {**states[0], "lane_states": {}}
    for state in states:
        same = ("fingerprint", "lanes", "first", "batches")
        if any(state[key] != merged[key] for key in same):
            raise ValueError("stream states of different streams or of different steps cannot be merged")
        merged["lane_states"].update(state["lane_states"])
    return merged


class StreamLoader:
    """This rank's training batches (WindowBatch, endless) from a streamed source, through a DataLoader with
    `num_workers` workers, and the stream's position after the last one given (`state_dict`).

    `start` (from `eval_sets`): where training begins, past the validation pairs held out from its head.
    `lanes`: the stream's lane count P (default: ranks x workers); a run that may resume on another number of
    processes or workers gives one all of them divide. `state`: a position to continue from (a merge of every
    rank's `state_dict()`, see merge_states). Problems met (`problems`) are said through `say`: the first
    SHOWN_PROBLEMS by name, the rest counted.
    """

    def __init__(
        self,
        source: shards.Source,
        settings: StreamSettings,
        *,
        start: tuple[int, int] = (0, 0),
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        timeout: float = 0,
        lanes: int | None = None,
        state: dict | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        if settings.patch_size <= 0:
            raise UserError("streaming cuts crops: it needs --patch-size > 0")
        self.source, self.settings, self.say = source, settings, say
        self.world_size = world_size
        consumers = world_size * max(1, num_workers)
        fingerprint = _fingerprint(source, tuple(start), settings)
        plan = Plan(tuple(range(start[0], len(source.shards()))), tuple(start), lanes or consumers, settings.seed)
        if not plan.shards:
            raise UserError(f"{source.text}: no training shards left after the validation pairs")
        batches, lane_states = 0, {}
        if state is not None:
            plan, batches, lane_states = self._continue(state, plan, consumers, fingerprint)
        if plan.lanes % consumers:
            raise UserError(f"a stream of {plan.lanes} lanes cannot be dealt to {consumers} ranks x workers")
        self.plan, self.fingerprint = plan, fingerprint
        self.batches_before, self.consumed = batches, 0
        # rank r takes global batches batches + r + W*i, all from the lanes congruent to batches + r modulo W
        self.lane_states = {i: s for i, s in lane_states.items() if (i - batches - rank) % world_size == 0}
        self.shown = 0
        say(f"streaming {source.describe()}; {plan.describe()}")
        self.dataset = TrainStream(
            source,
            settings,
            plan,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            batches=batches,
            lane_states=self.lane_states,
        )
        options = loaders.loader_kwargs(num_workers, persistent=False, timeout=timeout)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, collate_fn=_as_is, **options)

    def _continue(self, state: dict, plan: Plan, consumers: int, fingerprint: str):
        """The plan, global batches and lane states to go on from `state` (a new pass when they cannot)."""
        lane_states = {int(lane): s for lane, s in state["lane_states"].items()}
        same = state.get("format") == FORMAT and state["fingerprint"] == fingerprint
        if same and state["lanes"] % consumers == 0:
            kept = dataclasses.replace(plan, lanes=state["lanes"], first=state["first"])
            return kept, state["batches"], lane_states
        reached = max((s.get("pass", 0) for s in lane_states.values()), default=0)
        if state.get("format") != FORMAT:
            why = f"it was saved in the stream's format {state.get('format')}, not {FORMAT}"
        elif state["fingerprint"] != fingerprint:
            why = "the source or the sample settings changed"
        else:
            why = f"its {state['lanes']} lanes cannot be dealt to {consumers} ranks x workers"
        self.say(f"stream position not continued exactly ({why}): starting pass {reached + 1} instead")
        fresh = dataclasses.replace(plan, lanes=plan.lanes if plan.lanes % consumers == 0 else consumers)
        return dataclasses.replace(fresh, first=(reached + 1) * fresh.pieces), 0, {}

    @property
    def problems(self) -> dict[str, int]:
        """Bad pairs and unreadable shards left out so far by this rank's lanes (from the run's start)."""
        counts = {"bad": 0, "unreadable": 0}
        for state in self.lane_states.values():
            for kind, n in state.get("counts", {}).items():
                counts[kind] += n
        return counts

    def __iter__(self) -> Iterator[WindowBatch]:
        """The batches from the position reached (a second iteration goes on where the first stopped, with
        freshly started workers)."""
        self.dataset.batches = self.batches_before + self.consumed * self.world_size
        self.dataset.lane_states = dict(self.lane_states)
        for item in self.loader:
            if isinstance(item, StreamFailure):
                raise UserError(item.message)
            self.lane_states[item.lane] = item.state
            self.consumed += 1
            for _, line in item.events:
                self.shown += 1
                if self.shown <= SHOWN_PROBLEMS:
                    self.say(f"skipping {line}")
                elif self.shown == SHOWN_PROBLEMS + 1:
                    self.say("more bad pairs or unreadable shards are skipped and counted without being named")
            yield item.windows

    def state_dict(self) -> dict:
        """The position after the last batch given, as JSON-able data: this rank's lanes (merge_states joins the
        ranks'), assuming every rank has taken as many batches as this one."""
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "lanes": self.plan.lanes,
            "first": self.plan.first,
            "batches": self.batches_before + self.consumed * self.world_size,
            "lane_states": {str(lane): _as_json(state) for lane, state in sorted(self.lane_states.items())},
        }


# ---------------------------------------------------------------------------------------------
# Validation and test: small, in memory, map-style


@dataclasses.dataclass
class EvalSets:
    """Validation pairs and test images as small in-memory tables (loaders.eval_loader reads them), and where
    training starts: (shard, row) past the validation pairs held out from the stream's head."""

    val: datasets.Dataset
    test: datasets.Dataset | None
    start: tuple[int, int]
    skipped: int = 0  # bad files, pairs or shards left out of them (on_bad_sample="skip"), each said once


_PAIR_FEATURES = {"id": datasets.Value("string")} | dict.fromkeys(("lr", "hr"), datasets.Image(decode=False))


def _table(rows: list[dict], columns: tuple[str, ...]) -> datasets.Dataset:
    features = datasets.Features({c: _PAIR_FEATURES.get(c, datasets.Value("string")) for c in columns})
    return datasets.Dataset.from_dict({c: [row[c] for row in rows] for c in columns}, features=features)


def eval_sets(
    source: shards.Source,
    *,
    val_size: int,
    scale: int = 4,
    on_bad_sample: str = "error",
    retries: int = 3,
    backoff_s: float = 0.5,
    say: Callable[[str], None] = print,
) -> EvalSets:
    """The validation set: the source's validation split when it has one (its first `val_size` pairs; all with
    0), else `val_size` pairs held out from the head of the training stream (it then starts past them). The test
    set: the source's test split (LR images), or None. Read whole into memory: keep them small."""
    problems: list[str] = []

    def bad(line: str) -> None:
        if on_bad_sample == "error":
            raise UserError(line + " (--on-bad-sample skip trains without it)")
        problems.append(line)
        say(f"skipping {line}")

    for finding in source.findings:  # an image folder's files that pair with nothing, as training says them
        bad(f"{finding.path}: {finding.problem}")
    options = dict(scale=scale, bad=bad, retries=retries, backoff_s=backoff_s)
    has_val = bool(source.shards("validation"))
    if not has_val and val_size <= 0:
        raise UserError(f"{source.text}: has no validation split: hold pairs out of its head with --val-size N")
    columns = ("id", "lr", "hr", "lr_from_hr") if source.lr_from_hr else ("id", "lr", "hr")
    rows, start = [], (0, 0)
    shard_of = {name: i for i, name in enumerate(source.shards())}
    for where, example, _, _ in iter_pairs(source, "validation" if has_val else "train", **options):
        rows.append({**example, "lr": shards.read_cell(example["lr"]), "hr": shards.read_cell(example["hr"])})
        if not has_val:
            name, _, row = where.rpartition(" row ")
            start = (shard_of[name], int(row) + 1)
        if val_size and len(rows) == val_size:
            break
    if not rows or (val_size and not has_val and len(rows) < val_size):
        raise UserError(f"{source.text}: {len(rows)} usable validation pair(s), {val_size or 1} needed")
    if start[1] and start[0] < len(source.shards()) and _past_end(source, start, retries, backoff_s):
        start = (start[0] + 1, 0)
    test = None
    if source.shards("test"):
        found = [
            {"id": example["id"], "lr": shards.read_cell(example["lr"])}
            for _, example, _, _ in iter_pairs(source, "test", lr_only=True, **options)
        ]
        test = _table(found, ("id", "lr")) if found else None
    return EvalSets(_table(rows, columns), test, start, len(problems))


def _past_end(source: shards.Source, start: tuple[int, int], retries: int, backoff_s: float) -> bool:
    """Whether a shard has no row at or after `start` (then training starts at the next shard)."""
    rows = shards.shard_rows(source, "train", start[0], start[1], retries=retries, backoff_s=backoff_s)
    try:
        return next(rows, None) is None
    except shards.ShardUnreadable:
        return False
    finally:
        rows.close()


# ---------------------------------------------------------------------------------------------
# What a trainer opens


@dataclasses.dataclass
class StreamingData:
    """A streaming run's data (see open_streaming): `splits` (validation and test, map-style; no train table)
    and the training stream's source, settings and start, from which `train_loader` makes each rank's loader."""

    splits: Splits
    source: shards.Source
    settings: StreamSettings
    start: tuple[int, int]  # (shard, row) training starts at: past the validation pairs held out of the head
    lanes: int | None  # the stream's lanes (None: ranks x workers of the first loader made)

    def train_loader(
        self,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        state: dict | None = None,
        timeout: float = 0,
        say: Callable[[str], None] = print,
    ) -> StreamLoader:
        """This rank's endless training batches (WindowBatch), from the start of the stream or from `state`
        (a position saved as open_streaming says)."""
        return StreamLoader(
            self.source,
            self.settings,
            start=self.start,
            rank=rank,
            world_size=world_size,
            num_workers=num_workers,
            timeout=timeout,
            lanes=self.lanes,
            state=state,
            say=say,
        )


def open_streaming(
    data: str | list[str] | None,
    *,
    patch_size: int,
    batch_size: int,
    seed: int = 0,
    val_size: int = 0,
    crops_per_decode: int = 0,
    shuffle_crops: int = 1024,
    lanes: int = 0,
    on_bad_sample: str = "error",
    retries: int = 3,
    scale: int = 4,
    columns: tuple[str, str, str] = ("lr", "hr", "id"),
    folders: dict[str, str | None] | None = None,
    lr_from_hr: str | None = None,
    say: Callable[[str], None] = print,
) -> StreamingData:
    """Open a streaming run's data: what `--data` names, streamed (shards.resolve: a hub id, data files by path,
    URL, brace range or glob, or an image folder), read lazily; nothing is downloaded or decoded ahead.

    Returns StreamingData: `.splits` is a data.splits.Splits whose `val` and `test` are small in-memory tables
    that loaders.eval_loader reads as it reads a map-style run's (so validation and submissions are unchanged;
    `train` is None and `pixels` None). The validation pairs are the source's validation split (the given
    folders' with --val-hr-dir/--val-lr-dir; its first `val_size`, all with 0), else `val_size` pairs held out
    of the head of the training stream, never trained on. The test images are the source's test split (or
    --test-lr-dir's). `.train_loader(rank=, world_size=, num_workers=, state=, timeout=)` makes this rank's
    StreamLoader: endless batches, each rank taking the same number (so none waits at a collective).

    The stream's position: after a step, every rank's `loader.state_dict()` (JSON-able, its own lanes) is
    gathered and merged into one with `merge_states` (take them after the same number of batches on every rank);
    the checkpoint keeps that dict. To resume, give it to every rank's `train_loader(state=...)`: each continues
    at the next batch, nothing consumed is read again. On another ranks x workers that divides the saved lanes
    the batches are the same; otherwise a new pass starts and the stream says so in one line (give `lanes`, e.g.
    --stream-lanes, that every layout you may resume on divides).

    `folders`: sources.Folders field -> path, from --hr-dir and its siblings (shards.resolve); `columns`: the
    source's LR, HR and id columns; `lr_from_hr`: a degrade.KERNELS name. Bad pairs and unreadable shards stop
    with one line naming them, or with `on_bad_sample="skip"` are left out, named through `say` (the first
    ones) and counted (`StreamLoader.problems`; Splits.skipped for the validation and test sets).
    """
    if patch_size <= 0:
        raise UserError("streaming trains on crops: it needs --patch-size > 0")
    source = shards.resolve(data, columns=columns, scale=scale, lr_from_hr=lr_from_hr, folders=folders)
    settings = StreamSettings(
        patch_size=patch_size,
        batch_size=batch_size,
        seed=seed,
        scale=scale,
        crops_per_decode=crops_per_decode,
        shuffle_crops=shuffle_crops,
        on_bad_sample=on_bad_sample,
        retries=retries,
    )
    held = eval_sets(source, val_size=val_size, scale=scale, on_bad_sample=on_bad_sample, retries=retries, say=say)
    if source.shards("validation"):
        where = "from its validation split"
    else:
        first = source.shards()[held.start[0]] if held.start[0] < len(source.shards()) else "its end"
        where = f"held out of the stream's head (training starts at {first} row {held.start[1]})"
    tested = len(held.test) if held.test is not None else 0
    say(f"data: {source.text}: {len(held.val)} validation pair(s) {where}; {tested} test image(s)")
    splits = Splits(train=None, val=held.val, test=held.test, source=source.text, skipped=held.skipped)
    return StreamingData(splits, source, settings, held.start, lanes or None)
