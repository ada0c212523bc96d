"""seglosses.derived: the canonical distance maps against scipy's plain formula, and the tubed skeleton."""

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt as edt

from seglosses.derived import class_channels, signed_distance, tubed_skeleton


@pytest.mark.parametrize("shape, spacing", [((23, 17), None), ((23, 17), (0.5, 2.0)), ((7, 11, 9), (3.0, 0.8, 0.8))])
def test_signed_distance_equals_scipy_formula(shape, spacing):
    rng = np.random.default_rng(0)
    labels = (rng.random(shape) * 3).astype(np.int64)
    labels[(slice(0, 3),) * len(shape)] = 4  # a small class in a corner: its box touches the border
    channels = class_channels(labels, "multiclass", 6)  # class 5 absent
    got = signed_distance(channels, spacing)
    for c, inside in enumerate(channels):
        if not inside.any():
            assert (got[c] == 0).all()
            continue
        expected = edt(~inside, sampling=spacing) - edt(inside, sampling=spacing)
        np.testing.assert_allclose(got[c], expected, rtol=1e-6, atol=1e-5)


def test_a_class_covering_everything_has_no_boundary():
    assert (signed_distance(np.ones((1, 5, 5), bool)) == 0).all()


def test_soft_and_ignored_binary_values():
    mask = np.array([[[0.0, 0.6, 1.0, 255.0]]])
    assert class_channels(mask, "binary", 1).tolist() == [[[False, True, True, False]]]


def test_tubed_skeleton_stays_inside_the_labelled_foreground():
    mask = np.zeros((20, 20), np.int64)
    mask[4:16, 8:13] = 2
    mask[0, 0] = 255
    skel = tubed_skeleton(mask, "multiclass", ignore_index=255)
    assert set(np.unique(skel)) == {0, 2} and ((skel > 0) <= (mask == 2)).all() and (skel > 0).sum() > 12
