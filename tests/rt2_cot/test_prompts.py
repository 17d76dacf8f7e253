"""Prompt templates are data; the builder renders RT-2's, the plain and OpenVLA's prompts."""

from __future__ import annotations

import pytest

from rt2_cot.errors import ConfigError
from rt2_cot.prompts import build_prompt, get_template, load_templates, render_prompt


def test_cot_prompt_and_given_plan():
    assert build_prompt("cot", "bring me a drink") == "Instruction: bring me a drink"
    assert (
        build_prompt("cot", "bring me a drink", given_plan="pick up the 7up can")
        == "Instruction: bring me a drink Plan: pick up the 7up can. Action:"
    )
    # A plan that already ends its sentence does not get a second full stop.
    assert build_prompt("cot", "x", given_plan="pick up the can. ").endswith("Plan: pick up the can. Action:")


def test_plain_and_openvla_prompts():
    assert (
        build_prompt("plain", "pick up the rock")
        == "Q: what action should the robot take to pick up the rock? A:"
    )
    assert (
        build_prompt("openvla", "pick up the rock")
        == "In: What action should the robot take to pick up the rock?\nOut:"
    )
    # Templates without a plan have nothing to reuse.
    assert build_prompt("plain", "pick up the rock", given_plan="p") == build_prompt(
        "plain", "pick up the rock"
    )


def test_render_splits_the_given_text_from_the_prompt():
    rendered = render_prompt("cot", "  stack the blocks ", given_plan="pick up the red block")
    assert rendered.prompt == "Instruction: stack the blocks"
    assert rendered.continuation == "Plan: pick up the red block. Action:"
    assert rendered.text == build_prompt("cot", "stack the blocks", given_plan="pick up the red block")


def test_templates_describe_their_grammar():
    assert get_template("cot").has_plan and get_template("cot").num_action_tokens == 8
    assert not get_template("plain").has_plan
    assert get_template("openvla").num_action_tokens == 7


def test_unknown_style_names_the_choices():
    with pytest.raises(ConfigError, match="cot"):
        build_prompt("chatty", "x")


@pytest.mark.parametrize(
    "yaml_text",
    [
        "cot: [1, 2",
        "- a\n- b",
        "cot:\n  prompt: no placeholder\n",
        "cot:\n  prompt: '{instruction}'\n  colour: red\n",
    ],
)
def test_malformed_template_files_raise_config_error(tmp_path, yaml_text):
    path = tmp_path / "templates.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError):
        load_templates(path)


def test_missing_template_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_templates(tmp_path / "nope.yaml")


def test_the_gripper_opening_is_stated_in_percent_after_the_instruction():
    assert (
        build_prompt("cot", "pick up the apple", gripper=0.5) == "Instruction: pick up the apple Gripper: 50"
    )
    assert (
        build_prompt("cot", "pick up the apple", given_plan="pick up the apple", gripper=1.0)
        == "Instruction: pick up the apple Gripper: 100 Plan: pick up the apple. Action:"
    )
    # Out of range readings are clamped; templates without a `state` never state it.
    assert build_prompt("cot", "x", gripper=-0.2).endswith("Gripper: 0")
    assert build_prompt("plain", "pick up the rock", gripper=0.5) == build_prompt("plain", "pick up the rock")
    with pytest.raises(ConfigError, match="not a number"):
        build_prompt("cot", "x", gripper=float("nan"))


def test_the_gripper_motion_follows_the_opening_when_it_moves_toward_the_command():
    from rt2_cot.prompts import gripper_motion

    assert gripper_motion(0.5, 0.0) == "closing" and gripper_motion(0.5, 1.0) == "opening"
    assert gripper_motion(1.0, 1.0) is None and gripper_motion(0.0, 0.02) is None  # at rest
    assert gripper_motion(0.5, None) is None and gripper_motion(None, 0.0) is None
    assert (
        build_prompt("cot", "put the apple near the can", gripper=0.5, position=(1, 2, 3), motion="opening")
        == "Instruction: put the apple near the can Gripper: 50 opening Position: 1 2 3"
    )
    assert build_prompt("plain", "x", gripper=0.5, motion="closing") == build_prompt("plain", "x")
    with pytest.raises(ConfigError, match="closing"):
        build_prompt("cot", "x", gripper=0.5, motion="wiggling")


def test_the_position_follows_the_gripper_as_integers_over_the_box():
    from robot_io.safety import SafetyLimits
    from rt2_cot.model.configuration_rt2_cot_mini import DEFAULT_POSITION_BOX
    from rt2_cot.prompts import position_bins

    box = ((0.15, 0.80), (-0.40, 0.40), (0.0, 0.45))
    # The model's default box is the shield's workspace (a literal there, so the config module
    # does not import robot_io): they must not drift apart.
    limits = SafetyLimits()
    shield_box = tuple(zip(limits.workspace_min_xyz_m, limits.workspace_max_xyz_m, strict=True))
    assert shield_box == DEFAULT_POSITION_BOX
    assert position_bins((0.15, 0.0, 0.45), box) == (0, 128, 255)
    assert position_bins((5.0, -5.0, 0.225), box) == (255, 0, 128)  # outside the box saturates
    assert (
        build_prompt("cot", "pick up the apple", gripper=0.5, position=(0, 128, 255))
        == "Instruction: pick up the apple Gripper: 50 Position: 0 128 255"
    )
    assert build_prompt("plain", "x", position=(1, 2, 3)) == build_prompt("plain", "x")
    with pytest.raises(ConfigError, match="three numbers"):
        position_bins((0.1, 0.2), box)


def test_a_state_field_without_its_placeholder_is_refused(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text("cot:\n  prompt: 'Instruction: {instruction}'\n  state: 'Gripper open'\n")
    with pytest.raises(ConfigError, match="state"):
        load_templates(path)
