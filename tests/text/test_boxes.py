"""The one box grammar (utamoe.text.boxes): written with two decimals, read leniently from free
text by scorers and exactly between <box> tokens by the span parser."""

from __future__ import annotations

from utamoe.text.boxes import format_box, parse_box, read_box


def test_box_text_format_and_parse():
    assert format_box((1 / 3, 0.0, 2 / 3, 1 / 3)) == "[0.33,0.00,0.67,0.33]"
    assert parse_box("[0.33,0.00,0.67,0.33]") == (0.33, 0.0, 0.67, 0.33)
    assert parse_box("it is at ( 0.1, 0.2 ,0.3,0.4 ) I think") == (0.1, 0.2, 0.3, 0.4)
    for bad in ("", "[0.1,0.2,0.3]", "[0.5,0.5,0.1,0.9]", "[0.1,0.2,1.3,0.4]", "0.1,0.2,0.3,0.4",
                "[a,b,c,d]", None):
        assert parse_box(bad) is None


def test_reading_a_box_body_names_what_is_wrong():
    assert read_box(" [0.1,0.2,0.3,0.4] ") == (0.1, 0.2, 0.3, 0.4)
    assert read_box("[1e-1,0.2,0.3,0.4]") == (0.1, 0.2, 0.3, 0.4)
    assert read_box("[0.1,0.2]")[0] == "bad_box"
    assert read_box("[0.1,0.2,1.3,0.4]")[0] == "box_out_of_range"
    assert read_box("[0.5,0.2,0.5,0.4]")[0] == "empty_box"
    assert parse_box("[0.5,0.2,0.5,0.4]") == (0.5, 0.2, 0.5, 0.4)  # a zero-area answer is a box
