"""msvol.run_files.finding_maps: the interval label maps, with what only the change model sees pulled back from
halfway space (issue 12)."""

from __future__ import annotations

import numpy as np

from msvol.datatypes import AtrophyResult, IntervalImages, IntervalResult, LesionChange, LesionMap, Volume
from msvol.run_files import finding_maps

SHAPE = (16, 16, 16)


def test_growth_and_lesions_only_the_change_model_sees_are_in_the_finding_maps():
    followup_native = np.zeros(SHAPE, np.int32)
    followup_native[2:5, 2:5, 2:5] = 1  # a per-visit lesion that grew where its mask missed it
    followup_native[10:12, 2:4, 2:4] = 2  # a stable one
    halfway = np.roll(followup_native, 1, axis=0)  # halfway grid = follow-up grid shifted by 1 mm in x
    halfway[6:8, 3:6, 3:6] = 1  # the growth, under the lesion's id
    halfway[10:12, 10:12, 10:12] = 7  # a new lesion only the change model sees
    shift = np.eye(4)
    shift[0, 3] = -1.0  # halfway mm -> follow-up mm
    changes = (LesionChange(1, "enlarging", 20.0, 45.0, (0.0, 0.0, 0.0), (1,), (1,), change_only_mm3=18.0),
               LesionChange(2, "stable", 8.0, 8.0, (0.0, 0.0, 0.0), (2,), (2,)),
               LesionChange(7, "new", 0.0, 8.0, (0.0, 0.0, 0.0), (), (), change_only_mm3=8.0))
    images = IntervalImages(np.zeros(SHAPE), np.zeros(SHAPE), np.zeros(SHAPE, np.int32), halfway, np.eye(4), shift)
    result = IntervalResult("01", "02", AtrophyResult(0.0, None, 1.0, 0.99, 0.0), changes, ())
    followup = LesionMap("02", Volume(followup_native, np.eye(4), "labels"), Volume(np.zeros(SHAPE, np.float32), np.eye(4), "probability"), ())
    maps = finding_maps(images, result, followup)
    expected_enlarging = np.zeros(SHAPE, bool)
    expected_enlarging[2:5, 2:5, 2:5] = expected_enlarging[5:7, 3:6, 3:6] = True
    assert np.array_equal(maps["enlarging"].data == 1, expected_enlarging)
    assert set(np.unique(maps["enlarging"].data)) == {0, 1}
    expected_new = np.zeros(SHAPE, bool)
    expected_new[9:11, 10:12, 10:12] = True
    assert np.array_equal(maps["new"].data == 7, expected_new) and not maps["possible_new"].data.any()
