"""The coarse stage's union of global and region candidates: the merge against a set reference,
two-stage = the numpy rerank over exactly that union, exhaustive = the numpy rerank over all
items, region ScaNN searchers in the index store (positions, crops, truncation), and
image->report graded nDCG against a numpy reference."""

import os

import numpy as np
import pytest

from wristmir_jax.errors import UserError
from wristmir_jax.retrieval import coarse, store
from wristmir_jax.retrieval.query import Retriever
from wristmir_jax.retrieval.rerank import RerankSettings
from test_eval import make_index


def test_union_candidates_matches_set_union():
    rng = np.random.default_rng(0)
    a = rng.integers(-1, 30, (6, 8))
    b = rng.integers(-1, 30, (6, 5))
    u = coarse.union_candidates(a, b)
    assert u.shape == (6, 13)
    for row in range(6):
        got = [x for x in u[row].tolist() if x >= 0]
        assert len(got) == len(set(got))
        assert set(got) == ({x for x in a[row].tolist() if x >= 0} | {x for x in b[row].tolist() if x >= 0})


def _np_score(arr, qpos, alpha, w):
    g = arr.global_img.astype(np.float64)
    r = arr.region_img.astype(np.float64)
    m = arr.crop_mask.astype(np.float64)
    sg = g @ g[qpos]
    sr = np.einsum("nrd,rd->nr", r, r[qpos])
    we = w[None, :] * m[qpos][None, :] * m
    den = alpha + we.sum(1)
    return np.where(den > 0, (alpha * sg + (we * sr).sum(1)) / np.where(den > 0, den, 1), sg)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("union") / "idx"
    arr, patients = make_index(path, np.random.default_rng(3), n=90, d=16, n_patients=30)
    return str(path), arr, patients


def test_two_stage_reranks_the_union_and_exhaustive_reranks_all(small):
    path, arr, patients = small
    index = store.load_index(path)
    kc = 6
    ret = Retriever(index, RerankSettings(coarse_k=kc))
    qpos = [4, 17, 33]
    q = ret.from_index_items(qpos)
    s2, i2 = ret.image_to_image(q, region="distal_ulna", k=5, method="two_stage")
    se, ie = ret.image_to_image(q, region="distal_ulna", k=5, method="exhaustive")
    no_union = Retriever(index, RerankSettings(coarse_k=kc, coarse_union=False))
    _, i_g = no_union.image_to_image(q, region="distal_ulna", k=5, method="two_stage")
    w = np.array([0.0, 1.0, 0.0])
    g = arr.global_img.astype(np.float64)
    r1 = arr.region_img[:, 1].astype(np.float64)
    for row, p in enumerate(qpos):
        other = patients != patients[p]
        score = _np_score(arr, p, 0.25, w)
        sg = np.where(other, g @ g[p], -np.inf)
        top_g = set(np.argsort(-sg, kind="stable")[:kc].tolist())
        sr = np.where(other & (arr.crop_mask[:, 1] > 0), r1 @ r1[p], -np.inf)
        top_r = set(np.argsort(-sr, kind="stable")[:kc].tolist()) if arr.crop_mask[p, 1] > 0 else set()
        cand = np.array(sorted(top_g | top_r))
        want = cand[np.argsort(-score[cand], kind="stable")[:5]]
        np.testing.assert_array_equal(i2[row], want)
        np.testing.assert_allclose(s2[row], score[want], atol=1e-5)
        cand_g = np.array(sorted(top_g))
        np.testing.assert_array_equal(i_g[row], cand_g[np.argsort(-score[cand_g], kind="stable")[:5]])
        full = np.where(other, score, -np.inf)
        want_e = np.argsort(-full, kind="stable")[:5]
        np.testing.assert_array_equal(ie[row], want_e)
        np.testing.assert_allclose(se[row], full[want_e], atol=1e-5)


def test_index_region_scann_searchers(tmp_path):
    rng = np.random.default_rng(6)
    n, d = 2000, 16
    arr, _ = make_index(tmp_path / "tmp_idx", rng, n=n, d=d, n_patients=n, missing=0.2)
    out = str(tmp_path / "idx")
    fp = store.write_index(out, arr, model={"params_sha256": "c" * 64}, config=None, split="test",
                           build_scann=True, scann_params={"leaves_to_search": 16})
    for r_i, region in enumerate(("distal_radius", "distal_ulna", "ulnar_styloid")):
        assert fp["scann_regions"][region]["count"] == int((arr.crop_mask[:, r_i] > 0).sum())
    index = store.load_index(out)
    cs = coarse.CoarseSearcher.region_from_index(index, "distal_ulna")
    assert cs.kind == "scann"
    reg = arr.region_img[:, 1].astype(np.float32)
    valid = arr.crop_mask[:, 1] > 0
    q = reg[:50]
    codes = index.patient_codes()
    _, got = cs.search(q, 10, query_groups=codes[:50])
    assert np.all(valid[got[got >= 0]])
    assert not np.any(got == np.arange(50)[:, None])
    ref = np.where(valid[None, :] & (np.arange(n)[None, :] != np.arange(50)[:, None]), q @ reg.T, -np.inf)
    ref_top = np.argsort(-ref, axis=1)[:, :10]
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(got, ref_top)])
    assert recall >= 0.8
    pfile = os.path.join(out, "scann_distal_ulna", store.POSITIONS)
    data = open(pfile, "rb").read()
    open(pfile, "wb").write(data[:-8])
    with pytest.raises(UserError, match="truncated"):
        store.load_index(out)


def test_image_to_report_graded_ndcg_matches_numpy(small):
    from wristmir_jax.eval import evaluate as E
    from wristmir_jax.eval import metrics as M
    from wristmir_jax.reports.relevance import relevance

    path, arr, patients = small
    index = store.load_index(path)
    ret = Retriever(index)
    q = ret.from_index_items(np.arange(index.count))
    codes = index.patient_codes()
    gains = E._gains(np.asarray(arr.records), np.asarray(arr.records), codes, codes)
    res = E.image_to_report_graded(ret, q, gains, (5, 10))
    rel = np.asarray(relevance(arr.records, arr.records))[3]
    g = np.floor(np.clip(rel, 0, 1) * M.GAIN_LEVELS + 1e-6)
    same = patients[:, None] == patients[None, :]
    g[same] = 0
    sim = arr.global_img.astype(np.float64) @ arr.global_txt.astype(np.float64).T
    sim[same] = -np.inf
    nd = []
    for i in range(len(arr.records)):
        if (g[i] >= M.RELEVANCE_LEVEL).sum() == 0:
            continue
        top = np.argsort(-sim[i], kind="stable")[:10]
        dcg = (g[i, top] / np.log2(np.arange(2, 12))).sum()
        ideal = np.sort(g[i])[::-1][:10]
        nd.append(dcg / (ideal / np.log2(np.arange(2, 12))).sum())
    assert res["global"]["ndcg@10"] == pytest.approx(np.mean(nd), abs=1e-6)
