"""A corpus of malformed data files: each must fail with a DataError naming the file, the line
and the problem; and well-formed files in every format's corner must read exactly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.data import encode_labels, infer_label_names, read_examples, split_holdout
from kiln.errors import DataError
from tests.conftest import tiny_overrides

CSV = "text,label\n"
TSV = "text\tlabel\n"


def jsonl(*objects: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


OK = {"text": "fine", "label": "a"}

# (file name, content, line named in the message, the problem as a regex)
BAD = [
    # CSV quoting: the line named is where the bad quoted field opened
    ("open.csv", CSV + 'ok,a\n"great movie,a\nbad movie,b\nfine,b\n', 3, "never closed"),
    ("open_last.csv", CSV + 'ok,a\nfine,b\n"great movie,a\n', 4, "never closed"),
    ("open_crlf.csv", CSV.replace("\n", "\r\n") + 'ok,a\r\n"great,a\r\nbad,b\r\n', 3,
     "never closed"),
    ("open_cr.csv", CSV.replace("\n", "\r") + 'ok,a\r"great,a\rbad,b\r', 3, "never closed"),
    ("swallow.csv", CSV + 'ok,a\n"great movie,a\n"another",b\n', 3,
     'ends on line 4 with a " followed by \'a\''),
    ("undoubled.csv", CSV + 'ok,a\n"say "hi" now",a\n', 3, 'with a " followed by \'h\''),
    ("after_multiline.csv", CSV + '"two\nlines"x,a\n', 2, "ends on line 3 with a \""),
    ("second_field.csv", "id,text,label\n1,\"fine\"!,a\n", 2, "followed by '!'"),
    ("open_huge.csv", CSV + '"open,a\n' + "x,b\n" * 40_000, 2, "never closed"),
    ("huge_field.csv", CSV + '"' + "x" * 200_000 + '",a\n', 2, "longer than 131,072 characters"),
    ("misquoted.csv", CSV + 'ok,a\nhe said "hi, there",a\n', 3, "enclose a comma"),
    ("misquoted_fits.csv", "id,text,label\n1,ok,a\n2,he said \"hi, there\"\n", 3,
     "enclose a comma"),
    ("spaced_quote.csv", CSV + 'ok, "a, b"\n', 2, "enclose a comma"),
    ("runaway_count.csv", CSV + '"a\nb\nc"\n', 2, "quoted field opened on line 2 runs to line 4"),
    ("count_after_multiline.csv", CSV + '"two\nlines",a\nb,c,d\n', 4, "expected 2 fields"),
    ("too_few.csv", CSV + "ok,a\njust text\n", 3, "expected 2 fields like the header, found 1"),
    ("too_few.tsv", TSV + "ok\ta\njust text\n", 3, "expected 2 fields like the header, found 1"),
    ("too_many.tsv", TSV + "ok\ta\tb\n", 2, "found 3"),
    # the header
    ("dup.csv", "text,label,text\na,b,c\n", 1,
     r"column 'text' appears twice in the header \(columns 1 and 3\)"),
    ("dup_spaced.csv", "text, label,label \na,b,c\n", 1, "column 'label' appears twice"),
    ("dup.tsv", "label\ttext\tlabel\na\tb\tc\n", 1, "column 'label' appears twice"),
    ("no_column.tsv", "sentence\tlabel\na\tb\n", 1, "no column 'text' in the header"),
    ("header_only_bom.csv", "\ufeffsentence,label\na,b\n", 1, r"\['sentence', 'label'\]"),
    # bytes: NUL anywhere, not UTF-8 (encoded surrogates included)
    ("nul.csv", CSV + "ok,a\nb\x00ad,b\n", 3, "NUL byte"),
    ("nul_header.csv", "te\x00xt,label\nok,a\n", 1, "NUL byte"),
    ("nul.tsv", TSV + "ok\ta\nok\tb\x00\n", 3, "NUL byte"),
    ("nul.jsonl", jsonl(OK, OK) + '{"text": "x\x00", "label": "a"}\n', 3, "NUL byte"),
    ("latin1.csv", CSV.encode() + b"ok,a\ncaf\xe9,b\n", 3, r"b'\\xe9' are not valid UTF-8"),
    ("latin1_cr.csv", CSV.replace("\n", "\r").encode() + b"ok,a\rcaf\xe9,b\r", 3,
     "not valid UTF-8"),
    ("latin1_crlf.tsv", TSV.replace("\n", "\r\n").encode() + b"ok\ta\r\nok\ta\r\n\xff\tb\r\n", 4,
     "not valid UTF-8"),
    ("surrogate_bytes.csv", CSV.encode() + b"ok,a\n\xed\xa0\x80,b\n", 3, "not valid UTF-8"),
    ("latin1.jsonl", jsonl(OK).encode() + b'{"text": "caf\xe9", "label": "a"}\n', 2,
     "not valid UTF-8"),
    # JSONL: invalid Unicode through escapes
    ("surrogate.jsonl", jsonl(OK) + '{"text": "x\\ud800y", "label": "a"}\n', 2,
     r"'text' holds a lone surrogate \('\\ud800'\)"),
    ("low_surrogate.jsonl", jsonl(OK) + '{"text": "x\\udc00", "label": "a"}\n', 2,
     "lone surrogate"),
    ("reversed_pair.jsonl", '{"text": "\\ude00\\ud83d", "label": "a"}\n', 1, "lone surrogate"),
    ("surrogate_label.jsonl", jsonl(OK) + '{"text": "x", "label": "\\ud800"}\n', 2,
     "'label' holds a lone surrogate"),
    ("nul_escape.jsonl", jsonl(OK) + '{"text": "x\\u0000y", "label": "a"}\n', 2,
     "NUL character"),
    # JSONL: nesting, shapes and types
    ("deep_text.jsonl", jsonl(OK) + '{"text": ' + "[" * 1000 + "]" * 1000 + ', "label": "a"}\n',
     2, "nested more than 100 levels deep"),
    ("deep_other.jsonl", '{"text": "x", "label": "a", "x": ' + "{\"a\": " * 150 + "1"
     + "}" * 150 + "}\n", 1, "nested more than 100 levels deep"),
    ("deep_unclosed.jsonl", jsonl(OK) + "[" * 100_000 + "\n", 2, "nested more than 100 levels"),
    ("deep_after_blanks.jsonl", "\n" * 500 + "[" * 1000 + "]" * 1000 + "\n", 501,
     "nested more than 100 levels"),
    ("array.jsonl", jsonl(OK, ["fine", "a"]), 2, "expected a JSON object, not an array"),
    ("string.jsonl", jsonl(OK, "fine"), 2, "expected a JSON object, not a string"),
    ("null.jsonl", jsonl(OK, None), 2, "expected a JSON object, not null"),
    ("number.jsonl", jsonl(OK, 3), 2, "expected a JSON object, not a number"),
    ("text_object.jsonl", jsonl({"text": {"a": "b"}, "label": "a"}), 1,
     "'text' must be a string, not an object"),
    ("text_list.jsonl", jsonl({"text": ["a"], "label": "a"}), 1, "must be a string, not an array"),
    ("text_number.jsonl", jsonl({"text": 3, "label": "a"}), 1, "must be a string, not a number"),
    ("text_null.jsonl", jsonl({"text": None, "label": "a"}), 1, "must be a string, not null"),
    ("label_bool.jsonl", jsonl(OK, {"text": "x", "label": True}), 2,
     "label must be a string or an integer, not a boolean"),
    ("label_float.jsonl", jsonl({"text": "x", "label": 0.5}), 1, r"not a number \(0.5\)"),
    ("label_list.jsonl", jsonl({"text": "x", "label": ["a"]}), 1, "not an array"),
    ("label_null.jsonl", jsonl(OK, {"text": "x", "label": None}), 2, "missing label"),
    ("dup_key.jsonl", jsonl(OK) + '{"text": "x", "label": "a", "label": "b"}\n', 2,
     "key 'label' appears twice"),
    ("big_int.jsonl", '{"text": "x", "label": ' + "1" * 5000 + "}\n", 1, "not valid JSON"),
    ("broken.jsonl", jsonl(OK) + '{"text": "x", "label": "a"\n', 2, "not valid JSON"),
    ("broken_cr.jsonl", jsonl(OK, OK).replace("\n", "\r") + '{"text": \r', 3, "not valid JSON"),
    ("missing_key.jsonl", jsonl(OK, {"txt": "x", "label": "a"}), 2,
     r"no key 'text' \(keys: \['label', 'txt'\]\)"),
    # empty texts and labels
    ("blank_text.tsv", TSV + "ok\ta\n \tb\n", 3, "empty text in 'text'"),
    ("blank_label.csv", CSV + "ok,a\nok,  \n", 3, "missing label"),
]


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize(("name", "content", "line", "problem"), BAD, ids=[c[0] for c in BAD])
def test_bad_file_names_file_line_and_problem(
    tmp_path: Path, name: str, content: str | bytes, line: int, problem: str
) -> None:
    with pytest.raises(DataError, match=problem) as caught:
        read_examples(write(tmp_path / name, content))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / name} line {line}: "), message
    assert len(message) < 400, message


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("utf16.csv", CSV.encode("utf-16"), "is UTF-16 text"),
        ("utf16.jsonl", jsonl(OK).encode("utf-16"), "is UTF-16 text"),
        ("utf16_no_bom.tsv", TSV.encode("utf-16-le"), "line 1: NUL byte"),
        ("empty.tsv", "", "is empty"),
        ("header_only.csv", CSV, "has no examples"),
        ("blank_lines.jsonl", "\n \r\n\r", "has no examples"),
    ],
)
def test_bad_whole_file_names_the_file(tmp_path: Path, name: str, content: str | bytes,
                                       problem: str) -> None:
    with pytest.raises(DataError, match=problem) as caught:
        read_examples(write(tmp_path / name, content))
    assert str(caught.value).startswith(str(tmp_path / name))


def test_long_values_are_cut_with_a_count(tmp_path: Path) -> None:
    header = write(tmp_path / "wide.csv", "h" * 5000 + ",label\nx,y\n")
    with pytest.raises(DataError, match=r"line 1: no column 'text' .*\(5,000 characters\)") as e:
        read_examples(header)
    assert len(str(e.value)) < 300
    names = [f"class{i}" for i in range(3000)]
    f = write(tmp_path / "many.csv", CSV + "x,nope\n")
    with pytest.raises(DataError, match=r"'class9', \.\.\. 2,990 more\]") as e:
        encode_labels(read_examples(f), names, f)
    assert len(str(e.value)) < 300


PARSED = [
    ("bom_crlf.csv", "\ufefftext,label\r\nhello,a\r\nbye,b\r\n",
     [("hello", "a", 2), ("bye", "b", 3)]),
    ("cr.csv", "text,label\rhello,a\rbye,b\r", [("hello", "a", 2), ("bye", "b", 3)]),
    ("multiline.csv", 'text,label\n"two\nlines",a\n"three\r\nline\rbreaks",b\nlast,c\n',
     [("two\nlines", "a", 2), ("three\r\nline\rbreaks", "b", 4), ("last", "c", 7)]),
    ("quoting.csv", 'id,text,label\n1,"a, b",x\n2,"say ""hi"", ok",y\n3,"""quoted""",x\n',
     [("a, b", "x", 2), ('say "hi", ok', "y", 3), ('"quoted"', "x", 4)]),
    ("quotes_across_lines.csv", 'text,label\n"he said ""hi,\nthere"" ok",a\n"a, b",5"\n',
     [('he said "hi,\nthere" ok', "a", 2), ("a, b", '5"', 4)]),
    ("quoted_header.csv", '"text","label"\n"a",b\n\n\nc,"d"\n', [("a", "b", 2), ("c", "d", 5)]),
    ("plain_quotes.csv", 'text,label\n5" screen,x\nsize 5"",y\n', [('5" screen', "x", 2),
                                                                  ('size 5""', "y", 3)]),
    ("quotes.tsv", 'text\tlabel\n"quoted" text\tx\n"never closed, fine\ty\nsay ""hi""\tx\n',
     [('"quoted" text', "x", 2), ('"never closed, fine', "y", 3), ('say ""hi""', "x", 4)]),
    ("bom_crlf.tsv", "\ufefftext\tlabel\r\nhello\ta\r\nbye\tb\r\n", [("hello", "a", 2),
                                                                    ("bye", "b", 3)]),
    ("cr.tsv", "text\tlabel\rhello\ta\rbye\tb\r", [("hello", "a", 2), ("bye", "b", 3)]),
    ("bom_crlf.jsonl", "\ufeff" + jsonl(OK, {"text": "x", "label": 1}).replace("\n", "\r\n"),
     [("fine", "a", 1), ("x", "1", 2)]),
    ("cr.jsonl", jsonl(OK, {"text": "x", "label": "b"}).replace("\n", "\r"),
     [("fine", "a", 1), ("x", "b", 2)]),
    ("escapes.jsonl", '{"text": "\\ud83d\\ude00 caf\\u00e9", "label": "\\u00e9"}\n'
     '{"text": "text", "label": "label", "x": "\\u0000"}\n',
     [("\U0001f600 café", "é", 1), ("text", "label", 2)]),
    ("brackets.jsonl", jsonl({"text": "[" * 300, "label": "a", "x": [[[[1]]]]}),
     [("[" * 300, "a", 1)]),
    ("kept_label.csv", "text,label\nhi, pos\nho, neg\n", [("hi", " pos", 2), ("ho", " neg", 3)]),
]


@pytest.mark.parametrize(("name", "content", "expected"), PARSED, ids=[c[0] for c in PARSED])
def test_well_formed_corners_read_exactly(
    tmp_path: Path, name: str, content: str, expected: list[tuple[str, str, int]]
) -> None:
    examples = read_examples(write(tmp_path / name, content))
    assert [(e.text, e.label, e.line) for e in examples] == expected


def test_a_label_spelled_with_stray_spaces_is_refused_naming_both(tmp_path: Path) -> None:
    f = write(tmp_path / "train.csv", CSV + "a,positive\nb,negative\nc,positive\nd,positive \n")
    with pytest.raises(DataError, match=r"train.csv line 5: label 'positive ' differs from "
                                        r"'positive' \(line 2\) only by surrounding spaces"):
        infer_label_names(read_examples(f), None, f)


@pytest.mark.parametrize(
    ("label", "hint"),
    [(" positive", "differs from 'positive' only by surrounding spaces"),
     ("Positive", "differs from 'positive' only by case"),
     (" 1", "note the surrounding spaces"),
     ("postive", "did you mean 'positive'")],
)
def test_an_unknown_label_says_what_it_nearly_is(tmp_path: Path, label: str, hint: str) -> None:
    f = write(tmp_path / "eval.csv", CSV + f"a,negative\nb,{label}\n")
    with pytest.raises(DataError, match=f"eval.csv line 3: label '{label}' is not one of .*{hint}"):
        encode_labels(read_examples(f), ["negative", "positive"], f)


def test_single_class_and_single_row_errors_name_the_file(tmp_path: Path) -> None:
    f = write(tmp_path / "one.csv", CSV + "a,x\n")
    with pytest.raises(DataError, match=r"one.csv: the training data has only the label"):
        infer_label_names(read_examples(f), None, f)
    with pytest.raises(DataError, match=r"one.csv has 1 example\(s\); need at least 2"):
        split_holdout(read_examples(f), 0.1, 0, f)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (CSV + 'ok,a\n"great movie,a\n"another",b\n',
         "train.csv line 3: the quoted field opened here ends on line 4"),
        (CSV + "a,x\nb,x \nc,y\n",
         "train.csv line 3: label 'x ' differs from 'x' (line 2) only by surrounding spaces"),
    ],
)
def test_cli_exits_2_with_the_message_and_no_traceback(
    tmp_path: Path, cli_env: dict[str, str], content: str, message: str
) -> None:
    train = write(tmp_path / "train.csv", content)
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "train", *tiny_overrides(train, train, tmp_path / "run")],
        capture_output=True, text=True, env=cli_env, timeout=600,
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
