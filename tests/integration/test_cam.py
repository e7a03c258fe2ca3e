"""Class activation maps of trained networks: exactness, Keras/ONNX parity, sanity checks.

* ``fitted_mobilenet`` (the session fixture, MobileNetV2 at 64 px on synthetic cells, 2 x 2
  maps): the map's mean is the logit, ONNX fp32 and int8 reproduce Keras' maps.
* ``cnmc_model``: MobileNetV2 trained in this module on real C-NMC cells from
  ``../shared/data/cnmc-dev`` at CNMC_SIZE px (3 x 3 maps), for the sanity checks of
  docs/explain.rst: (a) model randomisation (Adebayo et al., 2018), (b) mass on the cell.
  (c) flips: exact for a flip-equivariant model (tests/unit/test_explain_unit.py); trained
  MobileNetV2s are not flip-equivariant (measured in docs/explain.rst).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnx")
scipy_stats = pytest.importorskip("scipy.stats")

from bmcd import Classifier  # noqa: E402
from bmcd.explain import cell_mask, mass_inside  # noqa: E402
from bmcd.preprocessing import PreprocessConfig, preprocess_batch  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.train]

#: The C-NMC model of the sanity checks: input side (3 x 3 maps), training cells, epochs,
#: held-out cells (measured: ~80 s of training on 2 busy cores, held-out AUC 0.83).
CNMC_SIZE, CNMC_TRAIN, CNMC_EPOCHS, CNMC_TEST = 96, 240, 4, 32


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image Spearman rank correlation of two batches of maps (NaN for flat maps)."""
    out = []
    for u, v in zip(a, b, strict=False):
        r = scipy_stats.spearmanr(u.ravel(), v.ravel())[0]
        out.append(r)
    return np.asarray(out, np.float64)


# ----------------------------------------------------------------------- exactness, parity


@pytest.fixture(scope="module")
def exported_cam(fitted_mobilenet, learnable_split, tmp_path_factory):
    from bmcd.exporters import export_onnx, quantize_int8

    d = tmp_path_factory.mktemp("cam_export") / "model"
    fitted_mobilenet.save(d)
    rec = export_onnx(d)
    # force: this 5-epoch model is fragile on its own (its p_all gate is tested in
    # test_export_onnx.py); the map's int8 check is still computed and recorded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rec8 = quantize_int8(d, calibration=learnable_split.train,
                             validation=learnable_split.val, force=True)
    return d, rec, rec8


def test_keras_map_mean_is_the_logit(fitted_mobilenet, learnable_split):
    paths = learnable_split.test.absolute_paths()[:24]
    maps = fitted_mobilenet.explain(paths)
    assert maps.shape == (24, 2, 2) and maps.dtype == np.float32
    p = fitted_mobilenet.predict_proba(paths)[:, 1]
    np.testing.assert_allclose(_sigmoid(maps.mean(axis=(1, 2))), p, atol=1e-5)


def test_export_writes_the_cam_output_and_checks_it(exported_cam, fitted_mobilenet,
                                                   learnable_split):
    from bmcd.exporters.cam import CAM_FP32_RTOL, CAM_INT8_RTOL
    from bmcd.exporters.quantize import default_reduce_range

    d, rec, rec8 = exported_cam
    assert rec["output"] == "p_all, cam" and rec["cam"]["available"]
    parity = rec["cam"]["parity"]
    assert parity["passed"] and parity["max_rel_diff"] <= CAM_FP32_RTOL, parity
    assert parity["shape"] == [2, 2]
    gate8 = rec8["gate"]["cam"]
    assert rec8["reduce_range"] == default_reduce_range()
    if not default_reduce_range():
        assert gate8["passed"] and gate8["max_rel_diff"] <= CAM_INT8_RTOL, (gate8, rec8["gate"])
    else:
        # x86-64 without VNNI: 7-bit weights, a little coarser. Measured on an AMD EPYC
        # (AVX2): 0.212 of the map scale here, just over the 0.2 the check allows, so the
        # check must say so (recorded, not silently passed) and stay close
        assert gate8["passed"] == (gate8["max_rel_diff"] <= CAM_INT8_RTOL), gate8
        assert gate8["max_rel_diff"] <= 1.5 * CAM_INT8_RTOL, (gate8, rec8["gate"])
    paths = learnable_split.test.absolute_paths()[:32]
    ref = fitted_mobilenet.explain(paths)
    scale = float(np.abs(ref).max())
    fp32 = Classifier.load(d, backend="onnx").explain(paths)
    assert np.abs(fp32 - ref).max() <= CAM_FP32_RTOL * scale
    int8_backend = Classifier.load(d, backend="onnx", precision="int8")
    if gate8["passed"]:
        int8 = int8_backend.explain(paths)
        assert np.abs(int8 - ref).max() <= 2 * CAM_INT8_RTOL * scale  # against Keras, not fp32
    else:  # maps that failed their check are not used to explain
        from bmcd.errors import CamUnavailableError

        with pytest.raises(CamUnavailableError, match="failed their check"):
            int8_backend.explain(paths)


def test_the_int8_cam_check_can_fail(exported_cam, learnable_split):
    from bmcd.errors import ExportValidationError
    from bmcd.exporters.cam import cam_parity

    d, _, _ = exported_cam
    x = preprocess_batch(learnable_split.test.absolute_paths()[:8],
                         Classifier.load(d, backend="onnx")._config())
    _, ref = Classifier.load(d, backend="onnx").backend_.explain_batch(x)
    with pytest.raises(ExportValidationError, match="class activation maps"):
        cam_parity(ref, ref[:, ::-1, :] * 1.5, rtol=0.1, what="int8")


def test_a_head_without_an_exact_map_is_refused():
    from bmcd.errors import CamUnavailableError
    from bmcd.runtimes.keras import KerasBackend
    from bmcd.training import build_model

    for kwargs in ({"head_units": (8,)}, {"pooling": "max"}):
        model = build_model("mobilenet_v2", 32, None, **kwargs)
        be = KerasBackend(model, {"image_size": 32, "arch": "mobilenet_v2"})
        with pytest.raises(CamUnavailableError, match="exact only"):
            be.explain_batch(np.zeros((1, 32, 32, 3), np.float32))


# ----------------------------------------------------------------------- sanity checks


@pytest.fixture(scope="module")
def cnmc_model(shared_data_dir):
    """MobileNetV2 from scratch on real C-NMC cells, and preprocessed held-out cells."""
    from bmcd.data import load_dataset

    root = shared_data_dir / "cnmc-dev"
    if not (root / "all").is_dir():
        pytest.skip(f"real C-NMC cells not found at {root}")
    ds = load_dataset(root)
    order = np.random.default_rng(0).permutation(len(ds))
    train = ds.subset(order[:CNMC_TRAIN])
    test = ds.subset(order[CNMC_TRAIN : CNMC_TRAIN + CNMC_TEST])
    # the tight crop these sanity figures were measured with (docs/explain.rst); with the
    # default window from scratch the map's mass on the cell mask was 0.28 against an area
    # of 0.33 on this small model: the map also reads the cell's outline against the black
    clf = Classifier(arch="mobilenet_v2", image_size=CNMC_SIZE, weights=None, seed=0,
                     preprocess=PreprocessConfig(image_size=CNMC_SIZE))
    clf.fit(train, epochs=CNMC_EPOCHS, fine_tune_epochs=0, verbose=0)
    x = preprocess_batch(test.absolute_paths(), clf._config())
    return clf, x, test.labels


def test_maps_fail_model_randomisation_only_when_the_model_is_random(cnmc_model):
    """(a) Adebayo et al. 2018: a trained model's maps must not look like a random one's."""
    from bmcd.runtimes.keras import KerasBackend
    from bmcd.training import build_model

    clf, x, _ = cnmc_model
    _, cam = clf.backend_.explain_batch(x)
    noise = np.random.default_rng(1).uniform(-1.0, 1.0, x.shape).astype(np.float32)
    _, cam_noisy = clf.backend_.explain_batch(np.clip(x + noise, 0, 255))
    random_model = build_model("mobilenet_v2", CNMC_SIZE, None)  # same graph, new weights
    _, cam_random = KerasBackend(random_model, clf.meta_).explain_batch(x)
    self_consistency = float(np.nanmedian(_spearman(cam, cam_noisy)))
    randomised = float(np.nanmedian(_spearman(cam, cam_random)))
    # measured: 0.86 against -0.21
    assert self_consistency >= 0.6
    assert randomised <= self_consistency - 0.4


def test_map_mass_lies_on_the_cell_more_than_a_uniform_map(cnmc_model):
    """(b) Mass of the map inside the cell mask preprocessing computes, against its area."""
    import cv2

    clf, x, _ = cnmc_model
    threshold = clf._config().threshold
    p, cam = clf.backend_.explain_batch(x)
    sign = np.where(p >= clf.threshold_, 1.0, -1.0)
    masks = [cell_mask(xi, threshold) for xi in x]
    area = np.mean([m.mean() for m in masks])
    mass = np.nanmean([mass_inside(c, m, s) for c, m, s in zip(cam, masks, sign, strict=False)])
    assert mass > area  # measured 0.712 against 0.702: the cell fills most of the square
    # the same cells at half size in the middle of a black square (area ~0.18): the map
    # follows the cell (measured 0.22 against 0.18)
    _S, h = CNMC_SIZE, CNMC_SIZE // 2
    small = np.zeros_like(x)
    for i, xi in enumerate(x):
        small[i, h // 2 : h // 2 + h, h // 2 : h // 2 + h] = cv2.resize(
            xi, (h, h), interpolation=cv2.INTER_AREA)
    p2, cam2 = clf.backend_.explain_batch(small)
    sign2 = np.where(p2 >= clf.threshold_, 1.0, -1.0)
    masks2 = [cell_mask(xi, threshold) for xi in small]
    area2 = np.mean([m.mean() for m in masks2])
    mass2 = np.nanmean([mass_inside(c, m, s) for c, m, s in zip(cam2, masks2, sign2, strict=False)])
    assert mass2 > area2
