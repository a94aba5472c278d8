import json

import numpy as np
import pytest

from inference.spkmix import load_timeline, mix_weights, validate_timeline
from core.errors import ConfigError

SPEAKERS = {"alto": 0, "tenor": 1}


def test_timeline_from_json_and_weights(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"alto": [[0, 0.5, 1, 0], [0.5, 1, 0, 0]], "1": [[0, 1, 0, 1]]}))
    timeline = load_timeline(path, SPEAKERS)
    weights = mix_weights(timeline, 100)
    assert weights.shape == (100, 2)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert weights[0, 0] > 0.95 and weights[-1, 1] == pytest.approx(1.0)
    assert weights[40, 0] < weights[10, 0]


def test_timeline_from_41_spkmix_py_is_parsed_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "spkmix.py"
    path.write_text(f"import os\nos.system('touch {marker}')\n"
                    "spk_mix_map = {0: [[0., 1., 1., 1.]], 1: [[0., 0.5, 0., 0.], [0.5, 1., 0., 1.]]}\n")
    timeline = load_timeline(path, SPEAKERS)
    assert not marker.exists()
    assert timeline[1][1] == [0.5, 1.0, 0.0, 1.0]


def test_all_zero_frames_become_uniform():
    timeline = validate_timeline({0: [[0, 1, 0, 0]], 1: [[0, 1, 0, 0]]}, SPEAKERS)
    np.testing.assert_allclose(mix_weights(timeline, 5), 0.5)


@pytest.mark.parametrize("raw,message", [
    ({0: [[0, 1, 1, 1]]}, "missing tenor"),
    ({0: [[0, 0.5, 1, 1], [0.6, 1, 1, 1]], 1: [[0, 1, 0, 0]]}, "contiguous"),
    ({0: [[0.1, 1, 1, 1]], 1: [[0, 1, 0, 0]]}, "contiguous"),
    ({0: [[0, 0.9, 1, 1]], 1: [[0, 1, 0, 0]]}, "must end at 1"),
    ({0: [[0, 1, -1, 1]], 1: [[0, 1, 0, 0]]}, "negative"),
    ({0: [[0, 1, 1]], 1: [[0, 1, 0, 0]]}, "t_start, t_end"),
    ({0: [[0, 1, 1, 1]], 5: [[0, 1, 0, 0]]}, "out of range"),
    ({"bass": [[0, 1, 1, 1]], 1: [[0, 1, 0, 0]]}, "unknown speaker"),
    ({0: [[0, 1, "x", 1]], 1: [[0, 1, 0, 0]]}, "not a number"),
    ({0: [[0, 1, float("nan"), 1]], 1: [[0, 1, 0, 0]]}, "NaN"),
])
def test_bad_timelines_are_rejected_with_a_message(raw, message):
    with pytest.raises(ConfigError, match=message):
        validate_timeline(raw, SPEAKERS)
