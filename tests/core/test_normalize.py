from core.normalize import NORMALIZATION_VERSION, doc_text, normalize_text


def test_normalize_collapses_case_space_and_width() -> None:
    assert normalize_text("  Cat\tVIDEO\n ") == "cat video"
    assert normalize_text("ＣＡＴ　video") == "cat video"  # full-width letters and ideographic space
    assert normalize_text("cat\u200bvideo") == "catvideo"  # zero-width space is a format char
    assert normalize_text("Straße") == "strasse"


def test_normalize_is_idempotent() -> None:
    for s in ["Hello  World", "Ünïcödé ＴＥＸＴ", "\x00ctrl\x07chars", "北京 美食"]:
        once = normalize_text(s)
        assert normalize_text(once) == once


def test_doc_text_joins_title_and_body() -> None:
    assert doc_text("My Title", "Some  body") == "my title some body"
    assert doc_text(None, "x") == "x"
    assert doc_text("", "") == ""


def test_version_is_an_int() -> None:
    assert isinstance(NORMALIZATION_VERSION, int) and NORMALIZATION_VERSION >= 1
