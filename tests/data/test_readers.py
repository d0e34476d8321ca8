import json
from pathlib import Path

import pytest

from kiln.data import encode_labels, infer_label_names, read_examples
from kiln.errors import DataError


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_csv_tsv_and_jsonl_give_the_same_examples(tmp_path: Path) -> None:
    csv = write(tmp_path / "a.csv", 'id,text,label\n1,"hello, world",pos\n2,bad day,neg\n')
    tsv = write(tmp_path / "a.tsv", "text\tlabel\nhello, world\tpos\nbad day\tneg\n")
    jsonl = write(tmp_path / "a.jsonl", '{"text": "hello, world", "label": "pos"}\n\n'
                                        '{"text": "bad day", "label": "neg"}\n')
    for f in (csv, tsv, jsonl):
        assert [(e.text, e.label) for e in read_examples(f)] == [("hello, world", "pos"),
                                                                   ("bad day", "neg")]


def test_custom_columns_and_multiline_csv_line_numbers(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", 'sentence,y\n"two\nlines",1\nok,\n')
    with pytest.raises(DataError, match=r"a.csv line 4: missing label"):
        read_examples(f, "sentence", "y")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "txt,label\nhi,pos\n", r"a.csv line 1: no column 'text' in the header \['txt', 'label'\]"),
        ("a.csv", "text,label\nhi,pos\n  ,neg\n", "a.csv line 3: empty text in 'text'"),
        ("a.csv", "text,label\nhi,pos,extra\n", "a.csv line 2: expected 2 fields like the header, found 3"),
        ("a.csv", "", "a.csv is empty"),
        ("a.csv", "text,label\n", "a.csv has no examples"),
        ("a.jsonl", '{"text": "hi", "label": "pos"}\n{"text": "x"\n', "a.jsonl line 2: not valid JSON"),
        ("a.jsonl", '{"text": "hi"}\n', "a.jsonl line 1: no key 'label'"),
        ("a.jsonl", '{"text": "hi", "label": 1.5}\n', "must be a string or an integer"),
        ("a.txt", "x", "unknown file type '.txt'"),
    ],
)
def test_bad_files_name_file_line_and_problem(tmp_path: Path, name: str, content: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_examples(write(tmp_path / name, content))


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", b"text,label\nfine,pos\ncaf\xe9,neg\n")
    with pytest.raises(DataError, match="a.csv line 3: bytes .* are not valid UTF-8"):
        read_examples(f)


def test_label_names_sorted_and_integers_numeric(tmp_path: Path) -> None:
    names = write(tmp_path / "n.jsonl", "\n".join(json.dumps({"text": "t", "label": x})
                                                  for x in ["pos", "neg", "pos"]))
    assert infer_label_names(read_examples(names), None) == ("neg", "pos")
    ints = write(tmp_path / "i.csv", "text,label\na,10\nb,2\nc,1\n")
    assert infer_label_names(read_examples(ints), None) == ("1", "2", "10")


def test_configured_names_are_indexed_by_integer_labels(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "text,label\na,1\nb,0\nc,positive\n")
    ex = read_examples(f)
    assert encode_labels(ex, ["negative", "positive"], f) == [1, 0, 1]


def test_unknown_label_names_file_line_and_choices(tmp_path: Path) -> None:
    f = write(tmp_path / "eval.csv", "text,label\na,negative\nb,postive\n")
    with pytest.raises(DataError, match=r"eval.csv line 3: label 'postive' is not one of \['negative', 'positive'\]"):
        encode_labels(read_examples(f), ["negative", "positive"], f)


def test_single_label_training_data_is_rejected(tmp_path: Path) -> None:
    f = write(tmp_path / "a.csv", "text,label\na,x\nb,x\n")
    with pytest.raises(DataError, match="only the label"):
        infer_label_names(read_examples(f), None)
