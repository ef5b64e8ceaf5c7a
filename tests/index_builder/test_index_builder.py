"""Production index builder: factory choice, tuning + curve, manifest recall, add/remove, shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from core.errors import CropsError, ErrorKind
from core.manifest import load_id_map, read_manifest, verify_bundle
from index_builder.faiss_utils import choose_factory, exact_topk, production_factory, recall_vs_exact
from tests.index_builder.conftest import clustered


def test_factory_scales_with_corpus_and_memory_budget() -> None:
    assert choose_factory(600, 384) == "Flat"
    assert production_factory(5183, 384) == "IVF64,PQ48,RFlat"
    assert production_factory(600, 384) == "IVF15,PQ48x4,RFlat"  # >= 39 training points per list
    assert choose_factory(1_000_000, 384) == "IVF1024,PQ48,RFlat"
    # 1M x (48 B codes + 8 B ids + 768 B fp16 copy) fits 1 GiB where full floats (1.5 KiB) do not
    assert choose_factory(1_000_000, 384, memory_budget_bytes=1 << 30) == "IVF1024,PQ48,Refine(SQfp16)"
    assert choose_factory(1_000_000, 384, memory_budget_bytes=100 << 20) == "IVF1024,PQ48"
    assert choose_factory(1_000_000, 384, opq=True).startswith("OPQ48,IVF1024,PQ48")
    with pytest.raises(CropsError):
        choose_factory(1_000_000, 384, memory_budget_bytes=1 << 20)


def test_ivfpq_is_tuned_to_target_with_curve_in_manifest(ivf_bundle: Path) -> None:
    m = verify_bundle(ivf_bundle, require_index=True)  # curve files are checksummed too
    sec = m.index
    assert sec is not None
    assert sec.factory.startswith("IVF") and sec.factory.endswith("RFlat")
    assert sec.target_met and sec.recall_at_100 is not None and sec.recall_at_100 >= 0.95
    assert sec.nprobe is not None and sec.k_factor is not None
    assert sec.curve_json in m.files and sec.curve_png in m.files
    curve = json.loads((ivf_bundle / str(sec.curve_json)).read_text())
    assert curve["chosen"]["nprobe"] == sec.nprobe and curve["chosen"]["k_factor"] == sec.k_factor
    # the chosen point is the least nprobe reaching the target at its k_factor (grid, then bisection),
    # where reaching means the recall's one-sided 95 % lower bound over the tuning queries does
    ok = [p for p in curve["points"] if p["recall"] - 1.645 * p["recall_se"] >= 0.95 and p["k_factor"] == sec.k_factor]
    assert sec.nprobe == min(p["nprobe"] for p in ok)
    assert all(p["recall_se"] > 0 for p in curve["points"] if p["recall"] < 1)
    assert len({p["k_factor"] for p in curve["points"]}) >= 2  # refine factor is tuned, not fixed
    assert (ivf_bundle / str(sec.curve_png)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sec.chosen is not None and sec.chosen["b1_ms_p50"] > 0 and sec.built_on == "cpu"


def test_tuning_bisects_the_effort_between_grid_points(ivf_data: tuple) -> None:
    from index_builder.tuning import NPROBE_GRID, reaches, tune

    docs, q = ivf_data
    index = faiss.index_factory(docs.shape[1], "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(docs)
    index.add(docs)
    truth = exact_topk(docs, q, 100)
    ivf = faiss.extract_index_ivf(index)

    def recall_at(nprobe: int) -> float:
        ivf.nprobe = nprobe
        return recall_vs_exact(index.search(q, 100)[1], truth)

    lo_rec, hi_rec = recall_at(8), recall_at(12)
    assert hi_rec > lo_rec + 0.005  # a target strictly between two grid points exists
    target = (lo_rec + hi_rec) / 2
    chosen, points = tune(index, q, truth, target, n_latency=5)
    assert chosen.nprobe is not None and chosen.nprobe > 8
    assert any(p.nprobe not in NPROBE_GRID for p in points)  # efforts between grid points were measured
    assert reaches(chosen, target) and chosen.recall - 1.645 * chosen.recall_se >= target
    below = max((p for p in points if p.nprobe is not None and p.nprobe < chosen.nprobe), key=lambda p: p.nprobe or 0)
    assert below.nprobe == chosen.nprobe - 1 and not reaches(below, target)  # the least effort that reaches it
    assert ivf.nprobe == chosen.nprobe  # the index is left at the chosen point


def test_a_point_reaches_the_target_only_when_its_lower_confidence_bound_does() -> None:
    from index_builder.faiss_utils import hit_counts, recall_with_error
    from index_builder.tuning import CurvePoint, reaches

    truth = np.arange(400).reshape(4, 100)
    found = truth.copy()
    found[0, :10] = -1  # query 0 finds 90 of its 100; the others all
    hits, want = hit_counts(found, truth)
    assert (hits / want).tolist() == [0.9, 1.0, 1.0, 1.0]
    assert recall_vs_exact(found, truth) == 0.975
    recall, se = recall_with_error(found, truth)
    assert recall == 0.975 and se == pytest.approx(np.std([0.9, 1, 1, 1], ddof=1) / 2)
    exact = CurvePoint(None, None, 0.96, 1.0, 1.0, 1.0, None, 0.0)
    assert reaches(exact, 0.95) and not reaches(exact, 0.97)
    noisy = CurvePoint(None, None, 0.96, 1.0, 1.0, 1.0, None, 0.01)  # 0.96 - 1.645 x 0.01 < 0.95
    assert not reaches(noisy, 0.95) and reaches(noisy, 0.94)


def test_manifest_recall_matches_a_fresh_measurement(ivf_bundle: Path, ivf_data: tuple) -> None:
    docs, _ = ivf_data
    sec = read_manifest(ivf_bundle).index
    assert sec is not None and sec.recall_queries_file
    queries = np.load(ivf_bundle / sec.recall_queries_file)
    index = faiss.read_index(str(ivf_bundle / sec.index_file))
    faiss.extract_index_ivf(index).nprobe = sec.nprobe
    faiss.downcast_index(index).k_factor = sec.k_factor
    _, found = index.search(queries, 100)
    fresh = recall_vs_exact(found, exact_topk(docs, queries, 100))
    assert round(fresh, 4) == sec.recall_at_100


def _top1(retriever: object, vecs: np.ndarray) -> list[str]:
    return [r.ids[0] for r in retriever.search_vectors(vecs, 10)]  # type: ignore[attr-defined]


def test_remove_then_add_keeps_ids_stable_without_rebuild(ivf_bundle: Path, ivf_data: tuple, tmp_path: Path) -> None:
    from index_builder.build import remove_docs
    from index_builder.ops import add_rows
    from service.engine import Retriever

    docs, _ = ivf_data
    before = read_manifest(ivf_bundle)
    gone = [f"s{i:05d}" for i in range(0, 4000, 7)]
    out = tmp_path / "updated"
    sec = remove_docs(ivf_bundle, [*gone, "not-there"], out=out)
    assert sec.ntotal == 4000 - len(gone)
    m = verify_bundle(out, require_index=True)
    assert m.bundle_id != before.bundle_id  # caches keyed by bundle id must not serve removed videos
    assert m.index is not None and m.index.updates[-1]["docs"] == len(gone)
    assert m.index.recall_stale is False and m.index.recall_at_100 is not None and m.index.recall_at_100 >= 0.9
    r = Retriever(out, use_gpu=False)  # the service's own check: id map rows == index rows
    assert not set(gone) & {i for res in r.search_vectors(docs[:200], 100) for i in res.ids}
    kept = [i for i in range(4000) if i % 7][:300]
    assert _top1(r, docs[kept]) == [f"s{i:05d}" for i in kept]  # survivors still map to their video
    # fresh uploads: appended rows, old rows untouched; the trained quantisers are reused
    index = faiss.read_index(str(out / "index.faiss"))
    new = clustered(50, seed=9)
    add_rows(index, new, start=int(index.ntotal))
    assert index.ntotal == sec.ntotal + 50
    faiss.extract_index_ivf(index).nprobe = 64
    _, rows = index.search(new, 1)
    assert rows.ravel().tolist() == list(range(sec.ntotal, sec.ntotal + 50))
    assert before.index is not None and read_manifest(ivf_bundle).index == before.index  # source untouched


def test_add_docs_encodes_new_videos_into_a_flat_bundle(bundle_copy: Path, tmp_path: Path) -> None:
    from index_builder.build import add_docs, remove_docs
    from service.engine import Retriever

    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "fresh1", "title": "axolotl regrows its leg", "text": "amphibian biology"})
                   + "\n" + json.dumps({"_id": "v00003", "title": "dup", "text": "dup"}) + "\n")
    with pytest.raises(CropsError) as exc:
        add_docs(bundle_copy, new, progress=False)
    assert exc.value.kind is ErrorKind.INVALID_INPUT and "already indexed" in str(exc.value)
    old_ids = load_id_map(bundle_copy / "id_map.json")
    sec = add_docs(bundle_copy, new, progress=False, on_duplicate="skip")
    assert sec.ntotal == 601 and sec.recall_at_100 == 1.0
    ids = load_id_map(bundle_copy / "id_map.json")
    assert ids[:600] == old_ids and ids[600] == "fresh1"
    (res,), _ = Retriever(bundle_copy, use_gpu=False).retrieve(["axolotl regrows leg"], k=5)
    assert res.ids[0] == "fresh1"
    remove_docs(bundle_copy, ["fresh1", "v00000"])
    (res,), _ = Retriever(bundle_copy, use_gpu=False).retrieve(["axolotl regrows leg"], k=100)
    assert "fresh1" not in res.ids and "v00000" not in res.ids and len(res.ids) == 100


def test_shard_merge_equals_single_build_and_resumes(
    model_bundle: Path, tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import index_builder.shards as shards
    from core.corpus import load_corpus
    from crops.cli import app
    from index_builder.build import build_index, encode_corpus

    monkeypatch.setattr(shards, "CHUNK", 128)  # 600 docs -> 5 chunks over 3 shards
    runner = CliRunner()
    sdir = tmp_path / "shards"
    for i in range(3):
        res = runner.invoke(app, ["index", "encode", "--bundle", str(model_bundle), "--corpus", str(tiny_corpus),
                                  "--shard", f"{i}/3", "--out", str(sdir), "--gpu", "off"])
        assert res.exit_code == 0, res.output
    assert [json.loads(p.read_text())["end"] for p in sorted(sdir.glob("*.json"))] == [128, 384, 600]
    # resume: a crashed shard 1 with one finished chunk re-encodes only the missing chunk
    (sdir / "shard-00001-of-00003.json").unlink()
    full = np.load(sdir / "shard-00001-of-00003.npy")
    (sdir / "shard-00001-of-00003.npy").unlink()
    parts = sdir / "shard-00001-of-00003.parts"
    parts.mkdir()
    np.save(parts / f"{128:012d}.npy", full[:128])
    calls: list[int] = []
    real = shards.encode_chunk
    monkeypatch.setattr(shards, "encode_chunk", lambda enc, docs, bs: calls.append(len(docs)) or real(enc, docs, bs))
    shards.encode_shard(model_bundle, tiny_corpus, (1, 3), sdir, progress=False)
    assert calls == [128] and np.array_equal(np.load(sdir / "shard-00001-of-00003.npy"), full)
    monkeypatch.setattr(shards, "encode_chunk", real)

    merged, single = tmp_path / "merged", tmp_path / "single"
    shutil.copytree(model_bundle, merged)
    shutil.copytree(model_bundle, single)
    res = runner.invoke(app, ["index", "merge", "--bundle", str(merged), "--shards", str(sdir)])
    assert res.exit_code == 0, res.output
    build_index(single, tiny_corpus, progress=False)
    vecs, _, _ = shards.load_shards(sdir)
    assert np.array_equal(vecs, encode_corpus(single, load_corpus(tiny_corpus), progress=False))
    assert (merged / "id_map.json").read_bytes() == (single / "id_map.json").read_bytes()
    assert (merged / "index.faiss").read_bytes() == (single / "index.faiss").read_bytes()
    # a missing shard is refused with the shard numbers
    (sdir / "shard-00002-of-00003.json").unlink()
    with pytest.raises(CropsError, match=r"shards \[2\] of 3"):
        shards.load_shards(sdir)


def test_recall_per_relevance_level(model_bundle: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    from index_builder.build import build_index

    graded = tmp_path / "graded"
    (graded / "qrels").mkdir(parents=True)
    rows = [json.loads(x) for x in tiny_corpus.read_text().splitlines()]
    queries = {f"q{t}": topic for t, topic in enumerate(["cats", "cooking", "gaming"])}
    (graded / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": f"{t} videos"}) + "\n"
                                                 for q, t in queries.items()))
    lines = ["query-id\tcorpus-id\tscore"]
    for q, topic in queries.items():
        mine = [r["_id"] for r in rows if r["text"].endswith(f"#{topic}")]
        lines += [f"{q}\t{d}\t{1 + j % 3}" for j, d in enumerate(mine[:60])]
    (graded / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    b = tmp_path / "b"
    shutil.copytree(model_bundle, b)
    sec = build_index(b, tiny_corpus, ann=True, graded=graded, progress=False, n_recall_queries=60)
    assert sec.factory.startswith("IVF")
    levels = sec.recall_by_level
    assert levels is not None and set(levels) == {"1", "2", "3"}
    for row in levels.values():
        assert row["pairs"] == 60 and 0 < row["exact"] <= 1
        assert row["loss"] == pytest.approx(row["exact"] - row["index"], abs=1e-3)


def test_cli_bad_input_is_one_line_error(model_bundle: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    def crops(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crops", *args], capture_output=True, text=True, timeout=120)

    out = crops("index", "encode", "--bundle", str(model_bundle), "--corpus", str(tiny_corpus), "--shard", "3/2",
                "--out", str(tmp_path / "s"))
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: --shard 3/2")
    out = crops("index", "remove", "--bundle", str(model_bundle))
    assert out.returncode == 2 and "error: give --id or --ids-file" in out.stderr


def test_removal_refused_for_index_types_without_it() -> None:
    from index_builder.ops import remove_rows, train_and_add

    index, _ = train_and_add("HNSW8", clustered(300, dim=16), use_gpu=False)
    with pytest.raises(CropsError, match="does not support removal"):
        remove_rows(index, np.array([1, 2]))


gpu = pytest.mark.skipif(
    __import__("index_builder.faiss_utils", fromlist=["gpu_count"]).gpu_count() == 0,
    reason="faiss sees no GPU (faiss-cpu or no CUDA device): GPU build path not exercised here",
)


@pytest.mark.gpu
@gpu
def test_gpu_build_and_cuda_doc_encoding(model_bundle: Path, ivf_data: tuple, tiny_corpus: Path,
                                         tmp_path: Path) -> None:
    from index_builder.build import build_from_vectors
    from service.engine import Retriever

    docs, q = ivf_data
    b = tmp_path / "gpu"
    shutil.copytree(model_bundle, b)
    sec = build_from_vectors(b, docs, [f"s{i:05d}" for i in range(len(docs))], q, ann=True, n_latency=20,
                             use_gpu=True)
    assert sec.built_on == "gpu" and sec.target_met
    r = Retriever(b)  # persisted in CPU form, loaded to GPU by the service when present
    assert _top1(r, docs[:50]) == [f"s{i:05d}" for i in range(50)]
    # corpus encoding on the CUDA execution provider agrees with CPU
    from core.corpus import load_corpus
    from index_builder.shards import doc_encoder, encode_chunk

    docs64 = load_corpus(tiny_corpus)[:64]
    gpu_enc, _ = doc_encoder(model_bundle, use_gpu=True)
    assert gpu_enc.providers[0] == "CUDAExecutionProvider"
    cpu_enc, _ = doc_encoder(model_bundle, use_gpu=False)
    assert np.abs(encode_chunk(gpu_enc, docs64, 32) - encode_chunk(cpu_enc, docs64, 32)).max() < 1e-3


def test_hnsw_is_tuned_on_ef_search_and_served_at_that_point(
    model_bundle: Path, ivf_data: tuple, tmp_path: Path
) -> None:
    from core.manifest import read_manifest
    from index_builder.build import build_from_vectors
    from service.engine import Retriever

    docs, q = ivf_data
    out = tmp_path / "hnsw"
    shutil.copytree(model_bundle, out)
    ids = [f"s{i:05d}" for i in range(len(docs))]
    sec = build_from_vectors(out, docs, ids, q, factory="HNSW16,SQ8", n_latency=10, use_gpu=False)
    assert sec.nprobe is None and sec.k_factor is None and sec.ef_search is not None
    assert sec.ef_search >= 100  # faiss searches with max(efSearch, k): smaller values are the same point
    assert sec.target_met and sec.recall_at_100 is not None and sec.recall_at_100 >= 0.95
    curve = json.loads((out / str(sec.curve_json)).read_text())
    assert curve["chosen"]["ef_search"] == sec.ef_search
    assert all(p["ef_search"] is not None and p["nprobe"] is None for p in curve["points"])  # one knob
    assert read_manifest(out).index.ef_search == sec.ef_search  # type: ignore[union-attr]

    r = Retriever(out, use_gpu=False)
    graph = faiss.downcast_index(r.index).hnsw
    assert graph.efSearch == sec.ef_search
    assert not graph.search_bounded_queue  # the unbounded heap: same results, less time (core.search_params)
    # the served point gives the recorded recall on the recorded held-out queries
    queries = np.load(out / str(sec.recall_queries_file))
    found = [[int(i[1:]) for i in res.ids] for res in r.search_vectors(queries, 100)]
    fresh = recall_vs_exact(np.array(found), exact_topk(docs, queries, 100))
    assert round(fresh, 4) == sec.recall_at_100


def test_graph_rows_are_stored_in_cluster_order_and_the_id_map_follows(model_bundle: Path, tmp_path: Path) -> None:
    from index_builder.build import build_from_vectors
    from index_builder.ops import LOCALITY_MIN_ROWS

    docs = clustered(LOCALITY_MIN_ROWS + 2000, seed=3)
    rng = np.random.default_rng(4)
    q = docs[rng.choice(len(docs), 60, replace=False)] + 0.3 * rng.normal(size=(60, 384)).astype(np.float32)
    ids = [f"d{i:05d}" for i in range(len(docs))]
    out = tmp_path / "graph"
    shutil.copytree(model_bundle, out)
    sec = build_from_vectors(out, docs, ids, q / np.linalg.norm(q, axis=1, keepdims=True),
                             factory="HNSW16,Flat", n_latency=5, use_gpu=False)
    stored = load_id_map(out / sec.id_map_file)
    assert sorted(stored) == ids and stored != ids  # the same documents, regrouped
    assert sec.timings is not None and sec.timings["order_s"] > 0
    rows = np.array([int(d[1:]) for d in stored])
    # neighbouring rows are now mostly from one cluster: consecutive rows are far more alike
    assert float((docs[rows[1:]] * docs[rows[:-1]]).sum(1).mean()) > float((docs[1:] * docs[:-1]).sum(1).mean()) + 0.2
    # and a search still names the right document: each probe finds itself through the id map
    index = faiss.read_index(str(out / sec.index_file))
    probe = rng.choice(len(docs), 50, replace=False)
    _, found = index.search(docs[probe], 1)
    assert [stored[r] for r in found[:, 0]] == [ids[i] for i in probe]


def test_permuting_a_graph_into_cluster_order_changes_no_result() -> None:
    from index_builder import ops

    docs = clustered(ops.LOCALITY_MIN_ROWS + 500, dim=64, seed=5)
    index, _ = ops.train_and_add("HNSW16,SQ8", docs, seed=0, use_gpu=False)
    q = docs[:40] + 0.2 * np.random.default_rng(6).normal(size=(40, 64)).astype(np.float32)
    before_d, before = index.search(q, 20)
    order = ops.store_in_locality_order(index, docs)
    assert order is not None and sorted(order.tolist()) == list(range(len(docs)))
    assert (order != np.arange(len(docs))).any()
    after_d, after = index.search(q, 20)
    assert (order[after] == before).all() and np.allclose(after_d, before_d)  # the same graph, renumbered
    small, _ = ops.train_and_add("HNSW16,SQ8", docs[:1000], seed=0, use_gpu=False)
    assert ops.store_in_locality_order(small, docs[:1000]) is None  # fits in cache: left as built
    flat, _ = ops.train_and_add("Flat", docs, seed=0, use_gpu=False)
    assert ops.store_in_locality_order(flat, docs) is None  # not a graph


@pytest.mark.parametrize("factory", ["IVF16,PQ8,RFlat", "HNSW16,SQ8"])
def test_adding_in_chunks_keeps_every_row_at_its_label(factory: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.search_params import set_search_params
    from index_builder import ops

    x = clustered(3000, seed=4)
    whole, _ = ops.train_and_add(factory, x, seed=0, use_gpu=False)
    monkeypatch.setattr(ops, "ADD_CHUNK", 700)  # 5 chunks, the last one short
    chunked, _ = ops.train_and_add(factory, x, seed=0, use_gpu=False)
    assert chunked.ntotal == whole.ntotal == 3000
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    _, truth = flat.search(x[::10], 100)
    for index in (whole, chunked):
        set_search_params(index, nprobe=16, k_factor=4.0, ef_search=256)
    _, found_whole = whole.search(x[::10], 100)
    _, found_chunked = chunked.search(x[::10], 100)
    if factory.startswith("IVF"):  # each row encoded on its own: the same index, chunked or not
        assert (found_chunked == found_whole).all()
    else:  # a graph built in chunks: each row still under its label, recall as good
        assert recall_vs_exact(found_chunked, truth) >= recall_vs_exact(found_whole, truth) - 0.02
        _, top1 = chunked.search(x[:300], 1)
        assert (top1.ravel() == np.arange(300)).mean() > 0.95
