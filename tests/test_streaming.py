"""Sources read from disk by index: a folder of pictures and ArrayRecord shards, written here from
generated colour pictures; what they read, what they refuse, and runs on them against in-memory runs."""

import io
import json
import os
import shutil

import chex
import numpy as np
import PIL.Image
import pytest

from ae_jax import config as config_lib
from ae_jax import data, train
from ae_jax.data import folder, records, shapes
import oracle
import runs

SIZE = 16  # pictures of SIZE x SIZE x 3: two stride-2 levels of the reference model divide it
N_TRAIN, N_TEST = 192, 48


@pytest.fixture(scope="session")
def colour(tmp_path_factory):
  """Generated coloured shapes as a folder of PNGs (train/ and test/, a subfolder per shape), and the
  same pictures in the folder's order (by path) as arrays, ArrayRecord shards (several per split), a
  prepared TFDS dataset and a .npz file. Returns (root, arrays, the rendered arrays)."""
  root = tmp_path_factory.mktemp("colour")
  x, y = shapes.render_many(N_TRAIN + N_TEST, SIZE, seed=3)
  rendered = (x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:])
  shapes.write_pictures(str(root / "png" / "train"), rendered[0], rendered[1])
  shapes.write_pictures(str(root / "png" / "test"), rendered[2], rendered[3], start=N_TRAIN)
  pictures = _load(source="folder", dir=str(root / "png"))
  arrays = (pictures.train[:], pictures.train.labels, pictures.test[:], pictures.test.labels)
  data.write_array_record(str(root / "records"), arrays, shard_bytes=SIZE * SIZE * 3 * 50)
  data.write_tfds(str(root / "tfds"), "colour_shapes", arrays)
  np.savez(root / "arrays.npz", train_images=arrays[0], train_labels=arrays[1], test_images=arrays[2],
           test_labels=arrays[3])
  return root, arrays, rendered


def _load(**fields):
  return data.load(oracle.data_config(**fields))


def test_array_record_shards_read_back_what_was_written(colour):
  root, (tx, ty, vx, vy), _ = colour
  ds = _load(source="array_record", dir=str(root / "records"))
  meta = json.loads((root / "records" / records.META).read_text())
  assert len(meta["splits"]["train"]["shards"]) == 4 and len(ds.train) == N_TRAIN  # 50 per shard
  rows = np.random.default_rng(0).integers(0, N_TRAIN, (3, 7))  # a [K, B] block, across shards
  chex.assert_trees_all_equal(ds.train[rows], tx[rows])
  chex.assert_trees_all_equal(ds.test[5:20], vx[5:20])
  chex.assert_trees_all_equal(ds.train[-1], tx[-1])
  np.testing.assert_array_equal(ds.train.labels, ty)
  assert ds.image_shape == (SIZE, SIZE, 3) and ds.train.dtype == np.uint8
  # The digest is the in-memory arrays' own: a run can move between the two formats.
  same = data.Dataset(data.check_split(tx, ty, "a", "train"), data.check_split(vx, vy, "a", "test"), "a")
  assert ds.summary()["sha256"] == same.summary()["sha256"]
  assert not data.on_device(None, ds.train) and data.on_device(None, same.train)  # streamed vs in memory


def test_array_record_problems_are_one_line(colour, tmp_path):
  root, arrays, _ = colour
  with pytest.raises(data.DataError, match="already holds an ArrayRecord dataset"):
    data.write_array_record(str(root / "records"), arrays)
  with pytest.raises(data.DataError, match="no ae_jax_records.json"):
    _load(source="array_record", dir=str(tmp_path))
  broken = tmp_path / "broken"
  data.write_array_record(str(broken), arrays, shard_bytes=SIZE * SIZE * 3 * 50)
  os.remove(broken / "train-00002-of-00004.array_record")
  with pytest.raises(data.DataError, match=r"train-00002-of-00004.array_record: missing \(1 of the train"):
    _load(source="array_record", dir=str(broken))
  with pytest.raises(data.DataError, match="records hold uint8"):
    data.write_array_record(str(tmp_path / "f"), (arrays[0] / 255.0, None, arrays[2] / 255.0, None))


def test_a_prepared_tfds_dataset_streams_what_it_decodes_into_memory(colour, monkeypatch, tmp_path):
  root, *_ = colour
  monkeypatch.setenv("AE_JAX_CACHE", str(tmp_path))  # its decoded copy stays out of the session's cache
  fields = {"source": "tfds", "name": "colour_shapes", "dir": str(root / "tfds"), "download": False}
  cached, streamed = _load(**fields), _load(**fields, stream=True)
  assert isinstance(cached.train, data.ArraySource) and isinstance(streamed.train, data.StreamSource)
  assert streamed.source.endswith("(streamed)") and streamed.labelled
  rows = np.random.default_rng(1).integers(0, N_TRAIN, (2, 5))
  chex.assert_trees_all_equal(streamed.train[rows], cached.train[rows])
  chex.assert_trees_all_equal(streamed.test[:], cached.test[:])
  np.testing.assert_array_equal(streamed.train.labels, cached.train.labels)
  part = _load(**fields, stream=True, train_size=30)
  assert len(part.train) == len(part.train.labels) == 30
  chex.assert_trees_all_equal(part.train[:], cached.train[:30])


def test_a_folder_of_pictures_reads_its_classes_and_splits(colour, tmp_path):
  root, _, (tx, ty, vx, vy) = colour
  ds = _load(source="folder", dir=str(root / "png"))
  # Files in an order fixed by a hash of their paths, so that the first N hold every class.
  order = [int(os.path.basename(f)[:-4]) for f in ds.train.files]
  assert sorted(order) == list(range(N_TRAIN)) and ds.train.files == folder._shuffled(ds.train.files)
  assert set(ds.train.labels[:12]) == {0, 1, 2}
  chex.assert_trees_all_equal(ds.train[:], tx[order])  # PNG is lossless
  np.testing.assert_array_equal(ds.train.labels, ty[order])
  test_order = [int(os.path.basename(f)[:-4]) - N_TRAIN for f in ds.test.files]
  chex.assert_trees_all_equal(ds.test[[3, 0]], vx[test_order][[3, 0]])
  assert "train/ and test/ subfolders" in ds.source
  # Converted once into shards: the same pictures, the same digest.
  converted = _load(source="array_record", dir=data.write_array_record(str(tmp_path / "conv"), ds))
  chex.assert_trees_all_equal(converted.train[:], tx[order])
  written = _load(source="array_record", dir=str(root / "records"))
  assert converted.summary()["sha256"] == written.summary()["sha256"]


def _picture(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  PIL.Image.fromarray(array).save(path)


def test_a_flat_folder_is_split_by_a_hash_of_each_path_and_resized_to_its_centre(tmp_path):
  # 36 wide x 12 high: blue between red sides 6 wide. Resized so the short side is 6 (18 x 6), then
  # centre-cropped to columns 6-11, which the bicubic kernel computes from source columns 8-27: only
  # blue. A crop from the left (or no resize) would show red.
  picture = np.zeros((12, 36, 3), np.uint8)
  picture[:, :6] = picture[:, 30:] = (255, 0, 0)
  picture[:, 6:30] = (0, 0, 255)
  for i in range(40):
    _picture(str(tmp_path / "pics" / f"{i:03d}.png"), picture)
  ds = _load(source="folder", dir=str(tmp_path / "pics"), image_size=6, test_fraction=0.25)
  assert len(ds.train) + len(ds.test) == 40 and 3 <= len(ds.test) <= 20 and ds.train.labels is None
  assert ds.image_shape == (6, 6, 3)
  blue = np.broadcast_to(np.array([0, 0, 255], np.uint8), (len(ds.train), 6, 6, 3))
  np.testing.assert_array_equal(ds.train[:], blue)
  # The rule is fixed: the same files go to the same split whatever else the folder holds.
  test_files = set(ds.test.files)
  _picture(str(tmp_path / "pics" / "new.png"), picture)
  assert test_files <= set(_load(source="folder", dir=str(tmp_path / "pics"), image_size=6,
                                 test_fraction=0.25).test.files)
  grey = _load(source="folder", dir=str(tmp_path / "pics"), image_size=6, channels=1, test_fraction=0.25)
  assert grey.image_shape == (6, 6, 1) and int(grey.train[0].max()) == round(0.114 * 255)  # PIL's L of blue
  # Without image_size every picture must be one size: one line naming the odd one.
  _picture(str(tmp_path / "pics" / "odd.png"), np.zeros((10, 10, 3), np.uint8))
  with pytest.raises(data.DataError, match=r"odd.png: a picture of 10x10, the first is 36x12; set data.imag"):
    _load(source="folder", dir=str(tmp_path / "pics"), test_fraction=0.25)


def test_a_folder_is_decoded_once_then_known_by_each_files_size_and_mtime(tmp_path, monkeypatch):
  monkeypatch.setenv("AE_JAX_CACHE", str(tmp_path / "cache"))
  for i in range(20):
    _picture(str(tmp_path / "pics" / f"{i:02d}.png"), np.full((8, 8, 3), 10 * i, np.uint8))
  first = _load(source="folder", dir=str(tmp_path / "pics"))
  path = os.path.join(first.train.root, first.train.files[0])
  st = os.stat(path)
  with open(path, "wb") as f:  # no picture any more, of the same size and (below) the same mtime
    f.write(b"\0" * st.st_size)
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  again = _load(source="folder", dir=str(tmp_path / "pics"))  # taken as unchanged: not decoded again
  assert again.summary()["sha256"] == first.summary()["sha256"]
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: checked again
  with pytest.raises(data.DataError, match=f"{os.path.basename(path)}: not a readable picture"):
    _load(source="folder", dir=str(tmp_path / "pics"))


def test_an_unreadable_picture_is_one_line_or_skipped_and_counted(colour, tmp_path):
  root, *_ = colour
  pics = tmp_path / "pics"
  for d in ("train", "test"):
    os.makedirs(pics / d / "a")
    for i in range(3):
      _picture(str(pics / d / "a" / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
  raw = (pics / "train" / "a" / "1.png").read_bytes()
  (pics / "train" / "a" / "1.png").write_bytes(raw[:len(raw) // 2])  # cut short
  with pytest.raises(data.DataError, match=r"train/a/1.png: not a readable picture .*data.skip_bad=True"):
    _load(source="folder", dir=str(pics))
  ds = _load(source="folder", dir=str(pics), skip_bad=True)
  assert len(ds.train) == 2 and "skipped {'train': 1}" in ds.source
  os.makedirs(pics / "train" / "loose")
  _picture(str(pics / "train" / "x.png"), np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(data.DataError, match="mixes pictures in class subfolders with pictures beside them"):
    _load(source="folder", dir=str(pics), skip_bad=True)


def _config(**dotted):
  small = {"batch_size": 16, "eval_batch_size": 32, "log_every_steps": 4, "checkpoint_every_steps": 5,
           "num_images": 4, "data_on_device": False, "model.latent_dim": 8, "model.filters": (8, 16)}
  return oracle.set_fields(config_lib.get_default(),
                           **{k.replace(".", "__"): v for k, v in {**small, **dotted}.items()})


def test_runs_streamed_from_shards_and_pictures_equal_the_in_memory_run_and_resume_bit_identically(
    colour, tmp_path):
  root, *_ = colour
  memory = tmp_path / "memory"
  arrays = {"data.source": "npz", "data.dir": str(root / "arrays.npz")}
  train.train_and_evaluate(_config(num_epochs=2, **arrays), str(memory))
  shards = {"data.source": "array_record", "data.dir": str(root / "records")}
  split = tmp_path / "split"  # stopped mid-epoch 2 (step 17 of 24), then resumed
  train.train_and_evaluate(_config(num_epochs=2, checkpoint_every_steps=17, **shards), str(split))
  for step in os.listdir(split / "checkpoints"):
    if step.isdigit() and int(step) > 17:
      shutil.rmtree(split / "checkpoints" / step)
  train.train_and_evaluate(_config(num_epochs=2, **shards), str(split))
  run = json.loads((split / "run.json").read_text())
  assert run["resumed_from_step"] == 17 and run["data_on_device"] is False
  pictures = tmp_path / "pictures"
  train.train_and_evaluate(_config(num_epochs=2, **{"data.source": "folder", "data.dir": str(root / "png")}),
                           str(pictures))
  for other in (split, pictures):
    runs.assert_same_run(memory, other)
  with open(pictures / "metrics.jsonl") as f:
    waits = [json.loads(line)["data_wait"] for line in f if '"train"' in line]
  assert waits and all(0 <= w < 1 for w in waits)


def test_binarisation_of_colour_pictures_is_refused_before_any_write(colour, tmp_path):
  root, *_ = colour
  c = _config(**{"data.source": "array_record", "data.dir": str(root / "records"),
                 "data.binarize": "dynamic"})
  with pytest.raises(ValueError, match=r"data.binarize='dynamic': binarisation is for grey images, .* 3 ch"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_folder_decode_keeps_grey_and_colour_channels():
  colour = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  buf = io.BytesIO()
  PIL.Image.fromarray(colour).save(buf, format="PNG")
  chex.assert_trees_all_equal(folder.decode(buf.getvalue(), 3, None), colour)
  assert folder.decode(buf.getvalue(), 1, None).shape == (4, 6, 1)
