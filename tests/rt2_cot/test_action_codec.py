"""The action codec: bins <-> metric commands <-> text, and OpenVLA's vocabulary-tail rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_io.types import EndEffectorCommand
from rt2_cot.action_codec import ActionCodec, OpenVLAActionCodec
from rt2_cot.errors import ActionParseError, ConfigError

CODEC = ActionCodec()
bins = st.integers(min_value=0, max_value=255)
eight_bins = st.lists(bins, min_size=8, max_size=8)
limits = st.floats(min_value=0.001, max_value=2.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(
    r_xyz=limits,
    r_rpy=limits,
    xyz=st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3),
    rpy=st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3),
    gripper=st.floats(0.0, 1.0),
)
def test_round_trip_is_within_half_a_bin(r_xyz, r_rpy, xyz, rpy, gripper):
    codec = ActionCodec(max_translation_m=r_xyz, max_rotation_rad=r_rpy)
    command = EndEffectorCommand(
        delta_xyz_m=tuple(v * r_xyz for v in xyz),
        delta_rpy_rad=tuple(v * r_rpy for v in rpy),
        gripper=gripper,
    )
    decoded = codec.decode(codec.encode(command))
    assert np.allclose(decoded.delta_xyz_m, command.delta_xyz_m, atol=codec.translation_bin_m / 2 + 1e-12)
    assert np.allclose(decoded.delta_rpy_rad, command.delta_rpy_rad, atol=codec.rotation_bin_rad / 2 + 1e-12)
    assert abs(decoded.gripper - gripper) <= 0.5 / 255 + 1e-12
    assert decoded.terminate is False


@settings(max_examples=300, deadline=None)
@given(tokens=eight_bins, r_xyz=limits, r_rpy=limits)
def test_every_decoded_action_is_inside_the_ranges(tokens, r_xyz, r_rpy):
    codec = ActionCodec(max_translation_m=r_xyz, max_rotation_rad=r_rpy)
    command = codec.decode(tokens)
    assert all(abs(v) <= r_xyz + 1e-12 for v in command.delta_xyz_m)
    assert all(abs(v) <= r_rpy + 1e-12 for v in command.delta_rpy_rad)
    assert 0.0 <= command.gripper <= 1.0
    assert command.terminate == (tokens[0] != 0)


@settings(max_examples=200, deadline=None)
@given(tokens=eight_bins)
def test_text_round_trip(tokens):
    text = ActionCodec.to_text(tokens)
    assert ActionCodec.from_text(text) == tokens
    assert ActionCodec.from_text(f"  {text.replace(' ', '   ')}\n") == tokens


@settings(max_examples=200, deadline=None)
@given(
    xyz=st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    rpy=st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    gripper=st.floats(-5, 5),
)
def test_out_of_range_commands_encode_to_valid_bins(xyz, rpy, gripper):
    tokens = CODEC.encode(
        EndEffectorCommand(delta_xyz_m=tuple(xyz), delta_rpy_rad=tuple(rpy), gripper=gripper)
    )
    assert len(tokens) == 8 and all(0 <= t <= 255 for t in tokens)


def test_128_is_exactly_zero_and_the_ends_are_the_limits():
    command = CODEC.decode([0, 128, 128, 128, 128, 128, 128, 255])
    assert command.delta_xyz_m == (0.0, 0.0, 0.0) and command.delta_rpy_rad == (0.0, 0.0, 0.0)
    assert command.gripper == 1.0 and not command.terminate
    extremes = CODEC.decode([1, 255, 1, 0, 255, 1, 0, 0])
    assert extremes.terminate
    assert extremes.delta_xyz_m == pytest.approx((0.05, -0.05, -0.05))
    assert extremes.delta_rpy_rad == pytest.approx((0.25, -0.25, -0.25))
    assert extremes.gripper == 0.0


def test_rt2_paper_example_decodes_to_a_small_motion():
    tokens = ActionCodec.from_text("1 143 129 123 145 114 115 127")
    command = CODEC.decode(tokens)
    assert command.terminate
    assert command.delta_xyz_m[0] == pytest.approx(15 / 127 * 0.05)
    assert command.gripper == pytest.approx(127 / 255)


@pytest.mark.parametrize(
    "text",
    ["", "1 2 3", "1 2 3 4 5 6 7 8 9", "0 131 119 96 128 128 128 256", "a b c d e f g h", "-1 0 0 0 0 0 0 0"],
)
def test_malformed_text_raises_action_parse_error(text):
    with pytest.raises(ActionParseError):
        ActionCodec.from_text(text)


def test_decode_rejects_wrong_length_and_out_of_range():
    with pytest.raises(ActionParseError):
        CODEC.decode([0] * 7)
    with pytest.raises(ActionParseError):
        CODEC.decode([0, 0, 0, 0, 0, 0, 0, 300])


def test_to_dict_is_the_cli_json_shape():
    d = CODEC.to_dict(CODEC.decode([0, 255, 128, 1, 128, 128, 128, 0]))
    assert set(d) == {"terminate", "delta_xyz_m", "delta_rpy_rad", "gripper"}
    assert d["delta_xyz_m"] == [0.05, 0.0, -0.05]
    json.dumps(d)


# -- OpenVLA mode ------------------------------------------------------------------------------
STATS = {
    "bridge_orig": {
        "action": {
            "q01": [-0.03, -0.04, -0.02, -0.1, -0.2, -0.3, 0.0],
            "q99": [0.05, 0.04, 0.06, 0.1, 0.2, 0.1, 1.0],
            "mask": [True, True, True, True, True, True, False],
        }
    }
}


@pytest.fixture()
def stats_path(tmp_path):
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps(STATS))
    return path


def test_openvla_decode_matches_a_hand_computed_example(stats_path):
    codec = OpenVLAActionCodec.from_dataset_statistics(stats_path, None, vocab_size=32000)
    # id 31872 -> bin 32000-31872-1 = 127 -> centre -1 + 127.5 * 2/255 = 0 -> the q01/q99 midpoint.
    # id 31999 -> bin 0 -> centre -1 + 1/255 -> q01 + 0.5 * (1/255) * (q99 - q01).
    # id 31744 -> bin 255, clipped to 254 -> centre 1 - 1/255; the gripper is not un-normalised.
    action = codec.token_ids_to_action([31872, 31999, 31872, 31872, 31999, 31872, 31744])
    expected = [0.01, -0.04 + 0.5 / 255 * 0.08, 0.02, 0.0, -0.2 + 0.5 / 255 * 0.4, -0.1, 1 - 1 / 255]
    assert action == pytest.approx(expected, abs=1e-9)
    command = codec.to_command([31872, 31999, 31872, 31872, 31999, 31872, 31744])
    assert command.gripper == pytest.approx((2 - 1 / 255) / 2)
    assert command.delta_xyz_m[0] == pytest.approx(0.01)


@settings(max_examples=100, deadline=None)
@given(bins_=st.lists(st.integers(0, 254), min_size=7, max_size=7))
def test_openvla_ids_round_trip_through_actions(bins_):
    codec = OpenVLAActionCodec(
        STATS["bridge_orig"]["action"]["q01"], STATS["bridge_orig"]["action"]["q99"], 32000
    )
    ids = [32000 - 1 - b for b in bins_]
    action = codec.token_ids_to_action(ids)
    assert codec.token_ids_to_action(codec.action_to_token_ids(action)) == pytest.approx(action, abs=1e-9)


def test_openvla_rejects_ids_outside_the_tail_and_unknown_datasets(stats_path):
    codec = OpenVLAActionCodec.from_dataset_statistics(stats_path, "bridge_orig", vocab_size=32000)
    with pytest.raises(ActionParseError):
        codec.token_ids_to_action([100] * 7)
    with pytest.raises(ConfigError):
        OpenVLAActionCodec.from_dataset_statistics(stats_path, "fractal", vocab_size=32000)


def test_openvla_actions_parse_from_streamed_bins(stats_path):
    from rt2_cot.streaming import parse_text
    from rt2_cot.token_map import OpenVLABinDecoder

    codec = OpenVLAActionCodec.from_dataset_statistics(stats_path, None, vocab_size=32000)
    ids = [31872, 31999, 31872, 31872, 31999, 31872, 31744]
    bins_ = [32000 - 1 - i for i in ids]  # what the tail token map streams
    complete = parse_text(" ".join(map(str, bins_)), style="openvla", codec=OpenVLABinDecoder(codec))
    assert complete.tokens == tuple(bins_)
    assert complete.command == codec.to_command(ids)
