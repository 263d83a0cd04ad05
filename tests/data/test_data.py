import shutil
from pathlib import Path

import cv2
import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import NO_WORKERS, TINY, assert_one_line_error, make_pair_folder, read_rgb, run_cli, run_tree, write_png
from insanesr_dist.data import crops as C
from insanesr_dist.data import loaders, pairs
from insanesr_dist.data.splits import check_patch_size, load_splits
from insanesr_dist.errors import UserError
from insanesr_dist.scoring.submission import read_submission


def test_folder_pairs_by_file_name_and_keeps_paths_not_bytes(pair_folder):
    splits = load_splits(pair_folder, val_fraction=0.1, seed=0)
    assert len(splits.train) + len(splits.val) == 23 and len(splits.val) == 3
    assert sorted(splits.test["id"]) == ["img_023.png", "img_024.png", "img_025.png"]
    row = splits.train[0]
    assert row["lr"]["bytes"] is None and row["lr"]["path"].endswith(f"train/LR/{row['id']}")
    assert row["hr"]["path"].endswith(f"train/HR/{row['id']}")
    assert (row["lr_height"], row["lr_width"]) == (16, 20)
    # The pairing is right: the HR on disk with the same name is the one stored (decoded) with this LR.
    assert np.array_equal(splits.pixels.pair(row["store_row"])[1], read_rgb(pair_folder / "train" / "HR" / row["id"]))


def test_split_is_deterministic_by_seed(pair_folder):
    ids = lambda seed: sorted(load_splits(pair_folder, val_fraction=0.2, seed=seed).val["id"])  # noqa: E731
    assert ids(1) == ids(1)
    assert ids(1) != ids(2)
    assert len(ids(1)) == 5


def _break(root: Path, name: str, data: bytes | np.ndarray) -> Path:
    path = root / "train" / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        write_png(path, data)
    return path


@pytest.mark.parametrize(
    "name,data,message",
    [
        ("HR/img_001.png", np.zeros((63, 80, 3), np.uint8), "must be exactly 4x"),
        ("LR/img_002.png", b"this is not a png", "cannot be decoded"),
        ("HR/extra.png", np.zeros((64, 80, 3), np.uint8), "has no partner"),
    ],
)
def test_bad_pairs_name_the_file(tmp_path, name, data, message):
    root = make_pair_folder(tmp_path / "d", num_train=4, num_test=0)
    path = _break(root, name, data)
    with pytest.raises(UserError, match=message) as e:
        load_splits(root, val_fraction=0.25, seed=0)
    assert path.name in str(e.value)


def test_missing_sources_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        load_splits(str(tmp_path / "nope" / "x" / "y"), val_fraction=0.1, seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a data folder"):
        load_splits(tmp_path / "empty", val_fraction=0.1, seed=0)
    (tmp_path / "half" / "train" / "LR").mkdir(parents=True)
    with pytest.raises(UserError, match="train/HR: missing"):
        load_splits(tmp_path / "half", val_fraction=0.1, seed=0)


def test_saved_dataset_with_image_columns(tmp_path, pair_folder):
    rng = np.random.default_rng(0)

    def png(a):
        return {"bytes": cv2.imencode(".png", a)[1].tobytes(), "path": None}

    lrs = [rng.integers(0, 256, (8, 8, 3), np.uint8) for _ in range(5)]
    hrs = [cv2.resize(a, (32, 32), interpolation=cv2.INTER_NEAREST) for a in lrs]
    features = datasets.Features({"lr": datasets.Image(), "hr": datasets.Image()})
    table = datasets.Dataset.from_dict({"lr": [png(a) for a in lrs], "hr": [png(a) for a in hrs]}, features=features)
    datasets.DatasetDict({"train": table, "test": table.remove_columns("hr")}).save_to_disk(tmp_path / "saved")
    splits = load_splits(tmp_path / "saved", val_fraction=0.2, seed=0)
    assert len(splits.train) == 4 and len(splits.val) == 1
    assert splits.test["id"] == [f"{i:05d}.png" for i in range(5)]  # ids made from row numbers
    sample = loaders.EvalImages(splits.val, with_hr=True)[0]
    assert sample[1].shape == (3, 8, 8) and sample[2].shape == (3, 32, 32)


def test_crops_stay_aligned_through_every_flip_and_rotation():
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (12, 17, 3), np.uint8)
    hr = np.repeat(np.repeat(lr, 4, 0), 4, 1)  # nearest x4: HR blocks must stay on their LR pixel
    seen = set()
    for i in range(64):
        a, b = C.random_pair_crop(lr, hr, 5, 4, C.crop_draws(0, 0, i))
        assert a.shape == (5, 5, 3) and b.shape == (20, 20, 3)
        assert np.array_equal(np.repeat(np.repeat(a, 4, 0), 4, 1), b)
        seen.add(a.tobytes())
    assert len(seen) > 32
    # Whole non-square images keep their shape (so they still batch), through flips and half turns only.
    whole = [C.random_pair_crop(lr, hr, 0, 4, C.crop_draws(0, 1, i)) for i in range(32)]
    assert all(a.shape == lr.shape and np.array_equal(np.repeat(np.repeat(a, 4, 0), 4, 1), b) for a, b in whole)
    assert len({a.tobytes() for a, _ in whole}) == 4


def test_training_samples_depend_on_seed_epoch_and_index_only(pair_folder):
    splits = load_splits(pair_folder, val_fraction=0.1, seed=0)
    samples = loaders.TrainPairs(splits.train, patch_size=4, scale=4, seed=7)
    lr0, hr0, code = samples[3]
    assert lr0.dtype == np.uint8 and lr0.shape == (4, 4, 3) and hr0.shape == (16, 16, 3) and 0 <= code < 8
    assert np.array_equal(samples[3][0], lr0)
    samples.set_epoch(1)
    assert not np.array_equal(samples[3][0], lr0)
    # Workers see the same samples as the main process.
    samples.set_epoch(0)
    loader = DataLoader(samples, batch_size=4, num_workers=2, collate_fn=loaders.collate_windows)
    first = next(iter(loader)).lr
    assert np.array_equal(first[3], lr0)


def _window_in(window: np.ndarray, image: np.ndarray) -> bool:
    """Whether `window` (h x w x 3) is a window of `image`."""
    h, w = window.shape[:2]
    views = np.lib.stride_tricks.sliding_window_view(image, (h, w, 3))[..., 0, :, :, :]
    return bool((views == window).all(axis=(-1, -2, -3)).any())


def test_epoch_samples_repeat_the_pairs_with_crops_of_their_own_whatever_the_process_count(pair_folder):
    """--epoch-samples: sample i is a window of pair i mod n, drawn for sample i, so an epoch of 3n samples
    visits each pair 3 times at different places; its length in samples is the same on 1 and on 2 ranks."""
    from accelerate.data_loader import prepare_data_loader

    train = load_splits(pair_folder, val_fraction=0.1, seed=0).train
    n = len(train)
    samples = loaders.TrainPairs(train, patch_size=4, scale=4, seed=0, length=3 * n)
    plain = loaders.TrainPairs(train, patch_size=4, scale=4, seed=0)
    assert len(samples) == 3 * n and len(plain) == n
    for i in range(n):
        assert all(np.array_equal(a, b) for a, b in zip(samples[i][:2], plain[i][:2]))  # the first n: as without
        lr, hr = pairs.decode_pair(train[i], 4)
        repeats = [samples[i + k * n] for k in (1, 2)]
        assert all(_window_in(r[0], lr) and _window_in(r[1], hr) for r in repeats)
    moved = sum(not np.array_equal(samples[i][0], samples[i + n][0]) for i in range(n))
    assert moved >= n - 2  # crops of their own (a 16x20 image's 4x4 windows rarely coincide)
    loader = loaders.train_loader(train, batch_size=4, patch_size=4, scale=4, seed=0, num_workers=0, epoch_samples=48)
    for processes in (1, 2):
        shard = prepare_data_loader(
            loader, num_processes=processes, process_index=0, put_on_device=False, use_seedable_sampler=True
        )
        assert len(shard) * 4 * processes == 48


def test_training_batches_reach_the_pin_step_and_accelerates_move_as_one_batch(pair_folder):
    """The training loader's batch is one object, not a tuple: torch's pin step and accelerate's send_to_device
    call its own pin_memory()/to() (they would pass a tuple's numpy arrays through as they are, unpinned), and
    the step takes it unmoved, moved or pinned with the same pixels."""
    from accelerate.utils import send_to_device
    from torch.utils.data._utils.pin_memory import pin_memory

    from insanesr_dist.data.batches import model_inputs

    train = load_splits(pair_folder, val_fraction=0.1, seed=0).train
    batch = next(iter(loaders.train_loader(train, batch_size=4, patch_size=4, scale=4, seed=0, num_workers=0)))
    assert isinstance(batch, loaders.WindowBatch)
    assert all(isinstance(a, np.ndarray) for a in (batch.lr, batch.hr, batch.codes))  # numpy through the pipe
    moved = send_to_device(batch, torch.device("meta"), non_blocking=True)
    assert [(t.device.type, t.dtype, tuple(t.shape)) for t in (moved.lr, moved.hr, moved.codes)] == [
        ("meta", torch.uint8, (4, 4, 4, 3)),
        ("meta", torch.uint8, (4, 16, 16, 3)),
        ("meta", torch.int64, (4,)),
    ]
    if torch.cuda.is_available():
        pinned = pin_memory(batch)
        assert all(t.is_pinned() for t in (pinned.lr, pinned.hr, pinned.codes))
    else:
        with pytest.raises(RuntimeError):  # pinning needs a GPU driver: the pin step got to the batch's arrays
            pin_memory(batch)
    cpu = torch.device("cpu")
    want = C.augment(*map(torch.from_numpy, (batch.lr, batch.hr, batch.codes)))
    for given in (batch, batch.to(cpu)):
        got = model_inputs(given, cpu, None, channels_last=True)
        assert all(torch.equal(g, w.float() / 255) for g, w in zip(got, want))
    assert all(t.device.type == "meta" for t in model_inputs(batch, torch.device("meta"), None, True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned host memory needs a GPU driver; none here")
def test_the_training_loader_yields_pinned_batches_on_a_gpu_machine(pair_folder):
    train = load_splits(pair_folder, val_fraction=0.1, seed=0).train
    loader = loaders.train_loader(train, batch_size=4, patch_size=4, scale=4, seed=0, num_workers=1)
    assert loader.pin_memory
    batch = next(iter(loader))
    assert all(t.is_pinned() for t in (batch.lr, batch.hr, batch.codes))


def test_patch_size_and_batching_are_checked_before_training(pair_folder):
    splits = load_splits(pair_folder, val_fraction=0.1, seed=0)
    check_patch_size(splits.train, 16, 4, "data")
    with pytest.raises(UserError, match="larger than the smallest LR image"):
        check_patch_size(splits.train, 17, 4, "data")
    check_patch_size(splits.train, 0, 4, "data")  # all images the same size: full images batch fine


def test_decoded_cache_serves_later_epochs_without_decoding(pair_folder, monkeypatch):
    train = load_splits(pair_folder, val_fraction=0.1, seed=0).train
    decoded = []
    real_decode = pairs.decode_rgb
    monkeypatch.setattr(pairs, "decode_rgb", lambda image, name: decoded.append(name) or real_decode(image, name))
    cached = loaders.TrainPairs(train, patch_size=8, scale=4, seed=0, cache_mb=64)
    uncached = loaders.TrainPairs(train, patch_size=8, scale=4, seed=0, cache_mb=0)
    for epoch in (1, 2):
        cached.set_epoch(epoch), uncached.set_epoch(epoch)
        for i in range(len(train)):
            a, b = cached[i], uncached[i]
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert len(decoded) == 2 * len(train) * 3  # LR + HR: once for the cached set, every epoch for the other
    tight = loaders.TrainPairs(train, patch_size=8, scale=4, seed=0, cache_mb=0)
    tight._cache_room = 3 * (16 * 20 + 64 * 80) * 3  # room for three pairs: the rest is decoded every time
    decoded.clear()
    for _ in range(2):
        [tight[i] for i in range(len(train))]
    assert len(tight._cache) == 3 and len(decoded) == 2 * (2 * len(train) - 3)


def test_persistent_workers_follow_the_epoch(pair_folder):
    """Workers started once must still crop by each new epoch (the epoch lives in shared memory)."""
    train = load_splits(pair_folder, val_fraction=0.1, seed=0).train
    samples = loaders.TrainPairs(train, patch_size=8, scale=4, seed=0, cache_mb=64)
    loader = DataLoader(
        samples, batch_size=4, collate_fn=loaders.collate_windows, **loaders.loader_kwargs(num_workers=1)
    )
    assert loader.persistent_workers
    reference = loaders.TrainPairs(train, patch_size=8, scale=4, seed=0)  # in this process, no workers
    for epoch in (1, 2, 3):
        samples.set_epoch(epoch)
        reference.set_epoch(epoch)
        crops = np.concatenate([batch.lr for batch in loader])
        assert np.array_equal(crops, np.stack([reference[i][0] for i in range(len(train))]))


WORKER_PROBE = """
import json, multiprocessing.forkserver, os, signal, threading, time, torch
from pathlib import Path
from insanesr_dist.data import demo, loaders
from insanesr_dist.training.preemption import PreemptionFlag

def blocked():
    return sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))

class Probe(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.tensor([os.getppid(), *blocked()])

def write_one(folder, index):  # a pool worker's task
    (folder / "files" / str(index)).write_text(json.dumps(blocked()))

if __name__ == "__main__":
    loaders.start_worker_server(PreemptionFlag.SIGNALS)  # as train() does: first the server, then the block
    flag = PreemptionFlag()
    threading.Thread(target=lambda: None).start()  # a threaded process, as a training process is
    loader = torch.utils.data.DataLoader(Probe(), batch_size=1,
                                         **loaders.loader_kwargs(1, persistent=False, timeout=60))
    rows = [batch[0].tolist() for batch in loader]
    # torchrun and SLURM signal every process of the rank: the server must live on (its workers end with it)
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    for stop in PreemptionFlag.SIGNALS:
        os.kill(server, stop)
    time.sleep(0.5)
    server_state = Path(f"/proc/{server}/status").read_text().split("State:")[1].split()[0]  # Z: it died
    # A pool from the same server (the demo data's) must not keep them blocked: it ends its workers by SIGTERM
    demo.write_atomically(Path("pool-output"), ["files"], write_one, 4, workers=2)
    pool = [json.loads(p.read_text()) for p in Path("pool-output/files").iterdir()]
    print(json.dumps({"pid": os.getpid(), "workers": rows, "blocked": blocked(), "server_state": server_state,
                      "pool": pool}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["script", "module"])
def test_workers_start_from_a_fork_server_and_keep_the_signal_block(tmp_path, launch):
    """Forking a threaded training process can hang a worker inside os.fork() (data/workers.py): workers come
    from the fork server instead. They, and the training process, must keep SIGTERM/SIGUSR1 blocked
    (training/preemption.PreemptionFlag), although starting the server's resource tracker unblocks SIGTERM.
    The server must outlive those signals, or the workers it forked would go with it and the next evaluation
    would wait for them (a hang or an error when SIGTERM reached a 2-process run at an epoch end); a process
    pool's workers from it must not block them. Run as `python -m` (as accelerate launch -m runs training), its
    workers run the main module again without runpy's warning that it was already imported."""
    import json
    import signal
    import sys

    script = tmp_path / "probes" / "probe.py"
    script.parent.mkdir()
    (script.parent / "__init__.py").write_text("")
    script.write_text(WORKER_PROBE)
    command = [str(script)] if launch == "script" else ["-m", "probes.probe"]
    result = run_tree([sys.executable, *command], timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    stop_signals = {int(signal.SIGTERM), int(signal.SIGUSR1)}
    assert stop_signals <= set(seen["blocked"])
    assert len(seen["workers"]) == 2 and seen["server_state"] != "Z"  # alive after SIGTERM and SIGUSR1
    for parent, *blocked in seen["workers"]:
        assert parent != seen["pid"]  # forked by the server, not by the training process
        assert stop_signals <= set(blocked)
    assert len(seen["pool"]) == 4 and not any(stop_signals & set(blocked) for blocked in seen["pool"])


def test_without_a_store_each_decoded_pair_gives_several_crops(pair_folder, monkeypatch):
    train = load_splits(pair_folder, val_fraction=0.1, seed=0, store_gb=0).train
    decoded = []
    real_decode = pairs.decode_rgb
    monkeypatch.setattr(pairs, "decode_rgb", lambda image, name: decoded.append(name) or real_decode(image, name))
    loader = loaders.train_loader(train, batch_size=4, patch_size=4, scale=4, seed=0, num_workers=0, crops_per_decode=4)
    chosen = []
    for epoch in (0, 1):
        loader.dataset.set_epoch(epoch)
        decoded.clear()
        batches = list(loader)
        assert len(batches) == len(train) // 4 and len(decoded) == 2 * len(train) // 4  # LR + HR, once per 4 crops
        chosen.append(sorted(set(decoded)))
    assert chosen[0] != chosen[1]  # each epoch its own pairs


# ---------------------------------------------------------------------------------------------
# Table sources named by their columns (--lr-column, --hr-column, --id-column): a hub dataset on disk


def _png_bytes(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def make_hub_folder(root: Path, *, num_train: int = 6, num_test: int = 2) -> tuple[Path, dict[str, np.ndarray]]:
    """A hub dataset as downloaded: data/{train,test}-00000-of-00001.parquet holding the images themselves, LR
    in an image column `low`, HR as encoded bytes in a binary column `high`, ids in `name`. Also the source pixels,
    by "LR/<name>" and "HR/<name>" (the PNG files they came from are deleted: the parquet alone must do)."""
    pairs = make_pair_folder(root / "pngs", num_train=num_train, num_test=num_test)
    pixels = {f"{d}/{p.name}": read_rgb(p) for d in ("LR", "HR") for p in (pairs / "train" / d).iterdir()}
    pixels |= {f"LR/{p.name}": read_rgb(p) for p in (pairs / "test" / "LR").iterdir()}
    names = sorted(p.name for p in (pairs / "train" / "LR").iterdir())
    tests = sorted(p.name for p in (pairs / "test" / "LR").iterdir())
    image = lambda name: {"bytes": _png_bytes(pixels[f"LR/{name}"]), "path": None}  # noqa: E731
    train = datasets.Dataset.from_dict(
        {"low": [image(n) for n in names], "name": names, "high": [_png_bytes(pixels[f"HR/{n}"]) for n in names]}
    )
    test = datasets.Dataset.from_dict({"low": [image(n) for n in tests], "name": tests})
    (root / "hub" / "data").mkdir(parents=True)
    for split, table in (("train", train), ("test", test)):
        table = table.cast_column("low", datasets.Image())
        table.to_parquet(str(root / "hub" / "data" / f"{split}-00000-of-00001.parquet"))
    shutil.rmtree(pairs)
    return root / "hub", pixels


HUB_COLUMNS = ("low", "high", "name")


def test_parquet_hub_folder_with_mapped_columns_gives_the_source_pixels(tmp_path):
    hub, pixels = make_hub_folder(tmp_path)
    splits = load_splits(hub, val_fraction=0.2, seed=0, columns=HUB_COLUMNS)
    assert sorted([*splits.train["id"], *splits.val["id"]]) == [f"img_{i:03d}.png" for i in range(6)]
    assert list(splits.test["id"]) == ["img_006.png", "img_007.png"]
    assert splits.train.features["lr"] == splits.train.features["hr"] == datasets.Image(decode=False)
    for table in (splits.train, splits.val):
        for row in table:
            lr, hr = splits.pixels.pair(row["store_row"])
            assert np.array_equal(lr, pixels[f"LR/{row['id']}"]) and np.array_equal(hr, pixels[f"HR/{row['id']}"])
    test = loaders.EvalImages(splits.test, with_hr=False)
    for i, image_id in enumerate(splits.test["id"]):
        assert np.array_equal(test[i][1].permute(1, 2, 0).numpy(), pixels[f"LR/{image_id}"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_data_file_folder_with_path_columns(tmp_path, fmt):
    """Relative paths are resolved against the dataset's folder (not the working directory), absolute ones kept."""
    root = tmp_path / "ds"
    make_pair_folder(root / "images", num_train=4, num_test=0)
    names = sorted(p.name for p in (root / "images" / "train" / "LR").iterdir())
    table = datasets.Dataset.from_dict(
        {
            "small": [f"images/train/LR/{n}" for n in names],
            "big": [str(root / "images" / "train" / "HR" / n) for n in names],
        }
    )
    (table.to_json if fmt == "jsonl" else table.to_csv)(str(root / f"train.{fmt}"))
    splits = load_splits(root, val_fraction=0.25, seed=0, columns=("small", "big", "id"))
    assert len(splits.train) == 3 and len(splits.val) == 1 and splits.test is None
    for row in splits.train:  # without an id column, ids are row numbers: row 2 is the third file
        name = names[int(Path(row["id"]).stem)]
        assert row["lr"]["path"] == str(root / "images" / "train" / "LR" / name)
        lr, hr = splits.pixels.pair(row["store_row"])
        assert np.array_equal(lr, read_rgb(root / "images" / "train" / "LR" / name))
        assert np.array_equal(hr, read_rgb(root / "images" / "train" / "HR" / name))


def test_missing_columns_and_unusable_folders_are_one_line_errors(tmp_path):
    hub, _ = make_hub_folder(tmp_path, num_train=3, num_test=1)
    with pytest.raises(UserError) as e:
        load_splits(hub, val_fraction=0.2, seed=0, columns=("lr_image", "high", "name"))
    assert str(e.value) == f"{hub} (train): no column 'lr_image' (--lr-column); it has: low, name, high"
    with pytest.raises(UserError, match=r"\(train\): no column 'ident' \(--id-column\); it has: low, name, high$"):
        load_splits(hub, val_fraction=0.2, seed=0, columns=("low", "high", "ident"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("no data here")
    with pytest.raises(UserError, match=r"not a data folder .*parquet, arrow, jsonl, csv"):
        load_splits(tmp_path / "docs", val_fraction=0.1, seed=0)


@pytest.mark.slow
def test_train_and_check_data_on_a_hub_folder_through_the_cli(tmp_path):
    hub, _ = make_hub_folder(tmp_path)
    flags = ["--lr-column", "low", "--hr-column", "high", "--id-column", "name"]
    checked = run_cli("insanesr-dist", "check-data", str(hub), *flags, "--patch-size", "8")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "6 training pair(s), 6 usable; 2 test image(s); 0 bad" in checked.stdout.splitlines()[-1]
    assert_one_line_error(
        run_cli("insanesr-dist", "check-data", str(hub), "--lr-column", "lr_image"),
        "(train): no column 'lr_image' (--lr-column); it has: low, name, high",
    )
    out = tmp_path / "run"
    result = run_cli(
        "insanesr-dist",
        "train",
        "--data",
        str(hub),
        *flags,
        "--epochs",
        "1",
        "--max-steps",
        "1",
        *TINY,
        *NO_WORKERS,
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "latest.safetensors").is_file()
    submission = read_submission(next((out / "submissions").glob("*.csv")))
    assert {k: v.shape for k, v in submission.items()} == {"img_006.png": (64, 80, 3), "img_007.png": (64, 80, 3)}
