"""ShapesWorld's own scorers (utamoe.shapes.scorers): caption objects read with the caption grammar,
order-free, every attribute and the position right."""

from utamoe.shapes.scorers import caption_metrics, caption_prf

GOLD = "a small red circle at top left and a large blue square at top right"


def test_caption_object_f1_is_order_insensitive():
    swapped = "a large blue square at top right and a small red circle at top left"
    assert caption_prf(swapped, GOLD)["f1"] == 1.0
    assert caption_prf("A large blue square at top right, a small red circle at top left.",
                       GOLD)["f1"] == 1.0
    one = caption_prf("a small red circle at top left", GOLD)
    assert (one["precision"], one["recall"]) == (1.0, 0.5)
    wrong_attr = caption_prf("a large red circle at top left", GOLD)
    assert wrong_attr["tp"] == 0 and wrong_attr["fp"] == 1
    junk = caption_prf(GOLD + " and a nice sky", GOLD)
    assert junk["fp"] == 1 and junk["recall"] == 1.0
    empty = caption_prf("", GOLD)
    assert (empty["precision"], empty["recall"], empty["f1"]) == (0.0, 0.0, 0.0)
    # Duplicates count once each: saying an object twice is one false positive.
    dup = caption_prf("a small red circle at top left and a small red circle at top left",
                      "a small red circle at top left")
    assert (dup["tp"], dup["fp"]) == (1, 1)
    m = caption_metrics([GOLD, ""], [GOLD, GOLD])
    assert m["exact"] == 0.5 and m["recall"] == 0.5 and m["precision"] == 1.0
