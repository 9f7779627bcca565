"""CKA against the reference notebook's values, layer hooks on OpenCLIP, Gram drift, centroids and LID."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grace_bench.errors import UserError
from grace_bench.geometry.features import (
    MinibatchCKA,
    center_gram,
    centroid_cosine,
    delta_lid,
    gram_drift,
    gram_linear,
    layer_features,
    layerwise_cka,
    layerwise_cka_from_features,
    lid_mle,
    linear_cka,
    minibatch_cka,
    rbf_cka,
    resblock_hooks,
    token_layout,
)


@pytest.fixture(scope="module")
def reference_xy():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = x + np.random.randn(100, 10)
    return x, y


def test_cka_matches_reference_notebook(reference_xy):
    x, y = reference_xy
    assert linear_cka(x, y) == pytest.approx(0.55761, abs=5e-6)
    assert rbf_cka(x, y, threshold=0.5) == pytest.approx(0.65483, abs=5e-6)
    assert linear_cka(x, y, debiased=True) == pytest.approx(0.51346, abs=5e-6)


def test_minibatch_cka_single_batch_is_debiased_cka(reference_xy):
    x, y = reference_xy
    assert minibatch_cka(x, y, batch_size=100) == pytest.approx(linear_cka(x, y, debiased=True), rel=1e-10)


def test_linear_cka_invariances_and_centering(reference_xy):
    x, _ = reference_xy
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((10, 10)))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-12)
    k = center_gram(gram_linear(x))
    torch.testing.assert_close(k.sum(0), torch.zeros(100, dtype=torch.float64), atol=1e-9, rtol=0)


def test_minibatch_cka_converges_to_full_cka():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16))
    y = np.tanh(x @ rng.standard_normal((16, 12))) + 0.5 * rng.standard_normal((3000, 12))
    full = linear_cka(x, y, debiased=True)
    assert minibatch_cka(x, y, batch_size=500) == pytest.approx(full, abs=0.02)
    acc = MinibatchCKA(2, 1)
    acc.update([x[:500], y[:500]], [y[:500]])
    grid = acc.compute()
    assert grid.shape == (2, 1) and grid[1, 0] == pytest.approx(1.0)


def test_layer_features_and_hooks_removed(tiny_classifier):
    torch.manual_seed(0)
    x = torch.rand(5, 3, 16, 16)
    blocks = tiny_classifier.model.visual.transformer.resblocks
    feats = layer_features(tiny_classifier, [(x, torch.zeros(5, dtype=torch.long))])
    assert list(feats) == ["resblock.0", "resblock.1", "embedding"]
    assert all(v.shape == (5, 32) for v in feats.values())
    assert all(len(b._forward_hooks) == 0 for b in blocks)
    # the CLS token of the last block, through ln_post and proj, is the final embedding
    visual = tiny_classifier.model.visual
    manual = F.normalize(visual.ln_post(feats["resblock.1"]) @ visual.proj, dim=-1)
    torch.testing.assert_close(manual, feats["embedding"], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(feats["embedding"], tiny_classifier.image_features(x))


def test_hooked_features_are_copies_not_views_of_block_outputs(tiny_classifier):
    """A CLS slice is a view of the block's (B, L, D) output: stored as is it would keep every output alive
    and change with it."""
    x = torch.rand(3, 3, 16, 16)
    with resblock_hooks(tiny_classifier, [3]) as store, torch.no_grad():
        tiny_classifier(x)
    for name, (t,) in store.items():
        assert t.shape == (3, 32)
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), name


def test_hooks_removed_when_forward_fails(tiny_classifier):
    blocks = tiny_classifier.model.visual.transformer.resblocks
    with pytest.raises(RuntimeError):
        layer_features(tiny_classifier, [torch.rand(2, 3, 15, 15)])  # wrong image size: forward raises
    assert all(len(b._forward_hooks) == 0 for b in blocks)
    with pytest.raises(KeyError):
        with resblock_hooks(tiny_classifier, [1]):
            assert all(len(b._forward_hooks) == 1 for b in blocks)
            raise KeyError("boom")
    assert all(len(b._forward_hooks) == 0 for b in blocks)


def test_token_layout_detection():
    assert token_layout(torch.zeros(4, 17, 8), 4, None) == "NLD"
    assert token_layout(torch.zeros(17, 4, 8), 4, None) == "LND"
    assert token_layout(torch.zeros(4, 4, 8), 4, False) == "LND"
    with pytest.raises(ValueError, match="ambiguous"):
        token_layout(torch.zeros(4, 4, 8), 4, None)


def test_layerwise_cka_self_is_one_on_diagonal(tiny_classifier):
    torch.manual_seed(0)
    batches = [(torch.rand(6, 3, 16, 16), torch.zeros(6, dtype=torch.long)) for _ in range(2)]
    names_x, names_y, grid = layerwise_cka(tiny_classifier, tiny_classifier, batches)
    assert names_x == names_y == ["resblock.0", "resblock.1", "embedding"]
    np.testing.assert_allclose(np.diag(grid), 1.0, rtol=1e-9)
    with pytest.raises(UserError, match="at least 4"):
        layerwise_cka(tiny_classifier, tiny_classifier, [(torch.rand(3, 3, 16, 16), torch.zeros(3))])


def test_layerwise_cka_from_collected_features_equals_streamed(tiny_classifier):
    from grace_bench.models.loading import build_clip_model
    from grace_bench.models.zero_shot import ZeroShotClassifier

    torch.manual_seed(1)
    other_clip = build_clip_model("tiny-clip")
    other = ZeroShotClassifier(other_clip.model, tiny_classifier.head, other_clip.mean, other_clip.std).eval()
    torch.manual_seed(0)
    batches = [(torch.rand(n, 3, 16, 16), torch.zeros(n, dtype=torch.long)) for n in (6, 3, 5)]
    names_x, names_y, want = layerwise_cka(tiny_classifier, other, batches)
    fx, fy = layer_features(tiny_classifier, batches), layer_features(other, batches)
    got = layerwise_cka_from_features(fx, fy, [len(y) for _, y in batches])  # the batch of 3 is skipped alike
    assert got[0] == names_x and got[1] == names_y
    np.testing.assert_allclose(got[2], want, rtol=1e-12)
    assert not np.allclose(want, 1.0)
    with pytest.raises(UserError, match="at least 4"):
        layerwise_cka_from_features(fx, fy, [3, 3, 3, 3, 2])


def test_gram_drift_matches_explicit_grams():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 8))
    b = a + 0.3 * rng.standard_normal((50, 8))
    ka, kb = center_gram(gram_linear(a)), center_gram(gram_linear(b))
    explicit = float((ka - kb).norm() / kb.norm())
    assert gram_drift(a, b) == pytest.approx(explicit, rel=1e-10)
    assert gram_drift(b, b) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(UserError, match="same inputs"):
        gram_drift(a, b[:10])


def test_centroid_cosine():
    id_feats = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]])
    id_labels = [0, 0, 1]
    shifted = np.array([[1.0, 0.1], [1.0, 0.0]])
    res = centroid_cosine(id_feats, id_labels, shifted, [0, 1])
    assert res["per_class"][0] == pytest.approx(1.0, abs=1e-6)  # same direction
    assert res["per_class"][1] == pytest.approx(0.0, abs=1e-12)  # orthogonal
    assert res["mean"] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(UserError, match="no class"):
        centroid_cosine(id_feats, id_labels, shifted, [5, 6])


def test_lid_mle_recovers_intrinsic_dimension():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((16, 4)))
    clean = rng.uniform(size=(1500, 4)) @ basis.T
    lid = lid_mle(clean, clean, k=20, exclude_self=True)
    assert lid.mean() == pytest.approx(4.0, abs=0.6)
    shifted = clean[:500] + 0.05 * rng.standard_normal((500, 16))
    res = delta_lid(clean, shifted, k=20)
    assert res["lid_clean"] == pytest.approx(float(lid.mean()))
    assert res["delta"] > 1.0  # noise in all 16 dimensions raises the local dimension
    with pytest.raises(UserError, match="raise n "):
        lid_mle(clean[:5], clean[:5], k=20)
