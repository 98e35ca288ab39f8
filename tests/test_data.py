"""Loading data: every format and layout, ids, skipped rows, and bad input named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from delift_core.data.layouts import ColumnMapping, detect_layout
from delift_core.data.dataset import load_dataset, load_dataset_bytes
from delift_core.errors import DataError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# Layouts


def test_alpaca_layout_joins_instruction_and_input(tmp_path):
    rows = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hello.", "input": "", "output": "Hello!"},
            {"instruction": "No input key.", "output": "ok", "extra": [1, 2]}]
    ds = load_dataset(write_jsonl(tmp_path / "a.jsonl", rows))
    assert ds.layout == "alpaca" and ds.source_format == "jsonl"
    assert ds.prompts == ["Add the numbers.\n\n2 and 3", "Say hello.", "No input key."]
    assert ds.responses == ["5", "Hello!", "ok"]
    assert ds.ids == ["0", "1", "2"] and ds.positions == [0, 1, 2]
    assert ds.rows == rows  # original rows, all fields
    assert ds.columns == ["instruction", "input", "output", "extra"]


@pytest.mark.parametrize("p_col,r_col,layout", [("prompt", "completion", "prompt_completion"),
                                                ("prompt", "response", "prompt_response"),
                                                ("question", "answer", "question_answer")])
def test_two_column_layouts(tmp_path, p_col, r_col, layout):
    rows = [{"id": f"r{k}", p_col: f"q{k}", r_col: f"a{k}", "meta": k} for k in range(3)]
    ds = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    assert ds.layout == layout
    assert ds.prompts == ["q0", "q1", "q2"] and ds.responses == ["a0", "a1", "a2"]
    assert ds.ids == ["r0", "r1", "r2"]
    assert ds.rows == rows


def test_openai_messages_last_assistant_turn_is_the_response(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"},
                      {"role": "user", "content": "And 3+3?"},
                      {"role": "assistant", "content": "6"},
                      {"role": "user", "content": "thanks"}]},
    ]
    ds = load_dataset(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert ds.layout == "messages"
    assert ds.prompts[0] == "Hi" and ds.responses[0] == "Hello"
    assert ds.responses[1] == "6"
    assert ds.prompts[1] == ("System: Be brief.\n\nUser: 2+2?\n\nAssistant: 4\n\n"
                             "User: And 3+3?")


def test_sharegpt_conversations(tmp_path):
    rows = [{"id": 7, "conversations": [{"from": "human", "value": "Name a fruit"},
                                        {"from": "gpt", "value": "Apple"}]},
            {"id": 8, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                                        {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"}]}]
    ds = load_dataset(write_jsonl(tmp_path / "sg.jsonl", rows))
    assert ds.layout == "conversations"
    assert ds.ids == ["7", "8"]
    assert ds.prompts == ["Name a fruit", "User: a\n\nAssistant: b\n\nUser: c"]
    assert ds.responses == ["Apple", "d"]


def test_column_mapping_for_unknown_layouts(tmp_path):
    rows = [{"key": "k1", "title": "T1", "body": "B1", "summary": "S1"},
            {"key": "k2", "title": "T2", "body": "", "summary": "S2"}]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    with pytest.raises(DataError, match="unknown layout"):
        load_dataset(path)
    ds = load_dataset(path, mapping=ColumnMapping(prompt=["title", "body"], response="summary",
                                                  id="key"))
    assert ds.layout == "mapping"
    assert ds.prompts == ["T1\n\nB1", "T2"] and ds.responses == ["S1", "S2"]
    assert ds.ids == ["k1", "k2"]
    with pytest.raises(DataError, match="'nope'"):
        load_dataset(path, mapping=ColumnMapping(prompt="nope", response="summary"))


def test_detect_layout_names():
    assert detect_layout(["instruction", "input", "output"]) == "alpaca"
    assert detect_layout(["messages", "id"]) == "messages"
    with pytest.raises(DataError, match="Recognised layouts"):
        detect_layout(["a", "b"])


# ----------------------------------------------------------------------------------------------
# Formats


ALPACA = [{"id": "x1", "instruction": "Add.", "input": "1 2", "output": "3"},
          {"id": "x2", "instruction": "Greet.", "input": "", "output": "Hi"},
          {"id": "x3", "instruction": "Quote.", "input": "", "output": "He said \"yes\", then\nleft."}]


def test_json_array_and_object_holding_an_array(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ALPACA, indent=2))
    ds = load_dataset(tmp_path / "a.json")
    assert ds.source_format == "json" and ds.rows == ALPACA and ds.ids == ["x1", "x2", "x3"]
    (tmp_path / "b.json").write_text(json.dumps({"version": 2, "data": ALPACA}))
    assert load_dataset(tmp_path / "b.json").rows == ALPACA


def test_csv(tmp_path):
    import csv

    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "instruction", "input", "output"])
        w.writeheader()
        w.writerows(ALPACA)
    ds = load_dataset(tmp_path / "a.csv")
    assert ds.source_format == "csv" and ds.layout == "alpaca"
    assert ds.rows == ALPACA
    assert ds.responses[2] == "He said \"yes\", then\nleft."


def test_csv_messages_column_holds_json_text(tmp_path):
    import csv

    msgs = [{"role": "user", "content": "Hi, you"}, {"role": "assistant", "content": "Hello"}]
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "messages"])
        w.writerow(["m1", json.dumps(msgs)])
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.layout == "messages" and ds.prompts == ["Hi, you"] and ds.responses == ["Hello"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ALPACA), tmp_path / "a.parquet")
    ds = load_dataset(tmp_path / "a.parquet")
    assert ds.source_format == "parquet" and ds.rows == ALPACA


def test_a_parquet_file_that_decodes_to_far_more_than_text_does_is_refused(monkeypatch):
    """A few KB of Parquet can decode to hundreds of GB (an upload once decoded it whole on the
    Data page, before any check): decoding stops past 64 times the file or 256 MiB."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    import delift_core.data.formats as formats

    monkeypatch.setattr(formats, "PARQUET_MIN_CAP", 2**20)  # 1 MiB here, 256 MiB in use
    rows = [{"prompt": "a" * 100_000, "response": "b"} for _ in range(40)]  # 4 MB of text
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, compression="zstd")
    data = buf.getvalue()
    assert len(data) * 64 < 2**20  # a small file
    with pytest.raises(DataError, match=r"bomb.parquet: decodes to more than 1 MiB"):
        load_dataset_bytes(data, "bomb.parquet")
    small = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ALPACA), small, compression="zstd")
    assert load_dataset_bytes(small.getvalue(), "a.parquet").rows == ALPACA


def test_save_to_disk_folder(tmp_path):
    import datasets

    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "hf"))
    ds = load_dataset(tmp_path / "hf")
    assert ds.source_format == "disk" and ds.rows == ALPACA and ds.ids == ["x1", "x2", "x3"]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA),
                               "test": datasets.Dataset.from_list(ALPACA[:1])})
    dd.save_to_disk(str(tmp_path / "hfdict"))
    assert len(load_dataset(tmp_path / "hfdict")) == 3  # 'train' by default
    assert len(load_dataset(tmp_path / "hfdict", split="test")) == 1
    (tmp_path / "plain_folder").mkdir()
    with pytest.raises(DataError, match="save_to_disk"):
        load_dataset(tmp_path / "plain_folder")


def test_load_dataset_bytes_like_an_upload():
    data = "".join(json.dumps(r) + "\n" for r in ALPACA).encode()
    ds = load_dataset_bytes(data, "upload.jsonl")
    assert ds.rows == ALPACA and ds.source == "upload.jsonl" and ds.file_sha256
    assert ds.text_sha256 == load_dataset_bytes(data, "again.jsonl").text_sha256


def test_jsonl_blank_lines_crlf_bom_and_unicode_line_separators(tmp_path):
    text = ("\ufeff" + json.dumps({"prompt": "a\u2028b", "completion": "c\u2029d"}) + "\r\n\r\n"
            + json.dumps({"prompt": "e", "completion": "f"}) + "\r\n")
    (tmp_path / "x.jsonl").write_text(text, encoding="utf-8")
    ds = load_dataset(tmp_path / "x.jsonl")
    assert ds.prompts == ["a\u2028b", "e"] and ds.responses == ["c\u2029d", "f"]


# ----------------------------------------------------------------------------------------------
# Skipped rows


def test_empty_responses_and_prompts_are_skipped_and_reported(tmp_path):
    rows = [{"id": "a", "prompt": "p", "response": "r"},
            {"id": "b", "prompt": "p", "response": "  "},
            {"id": "c", "prompt": "", "response": "r"},
            {"id": "d", "prompt": "p", "response": None},
            {"id": "e", "prompt": "p2", "response": "r2"}]
    ds = load_dataset(write_jsonl(tmp_path / "s.jsonl", rows))
    assert ds.ids == ["a", "e"] and ds.positions == [0, 4]
    assert [(s.position, s.location, s.reason) for s in ds.skipped] == [
        (1, "line 2", "empty response"), (2, "line 3", "empty prompt"),
        (3, "line 4", "empty response")]
    assert [s.row for s in ds.skipped] == rows[1:4]
    assert "skipped 2 (empty response), 1 (empty prompt)" in ds.summary()
    with pytest.raises(DataError, match="all 2 rows were skipped"):
        load_dataset(write_jsonl(tmp_path / "none.jsonl", rows[1:3]))


# ----------------------------------------------------------------------------------------------
# Bad input: the message names the file and the line or row


def test_malformed_json_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": }\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3 is not valid JSON"):
        load_dataset(p)
    p.write_text('{"prompt": "a", "completion": "b"}\n["x", "y"]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2 is a JSON list"):
        load_dataset(p)


def test_missing_column(tmp_path):
    p = write_jsonl(tmp_path / "miss.jsonl", [{"instruction": "a", "output": "b"},
                                             {"instruction": "c", "input": "d"}])
    with pytest.raises(DataError, match=r"miss\.jsonl: line 2: missing column 'output'"):
        load_dataset(p)
    p = write_jsonl(tmp_path / "noid.jsonl", [{"id": "1", "prompt": "a", "response": "b"},
                                             {"prompt": "c", "response": "d"}])
    with pytest.raises(DataError, match=r"noid\.jsonl: line 2: missing column 'id'"):
        load_dataset(p)


def test_unknown_layout_names_the_file_and_columns(tmp_path):
    p = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError) as e:
        load_dataset(p)
    msg = str(e.value)
    assert "odd.jsonl" in msg and "unknown layout" in msg and "'bar'" in msg
    assert "--prompt-col" in msg


def test_duplicate_ids(tmp_path):
    p = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "prompt": "1", "response": "2"},
                                            {"id": "b", "prompt": "1", "response": "2"},
                                            {"id": "a", "prompt": "3", "response": "4"}])
    with pytest.raises(DataError, match=r"dup\.jsonl: duplicate id 'a' at line 1 and line 3"):
        load_dataset(p)
    p = write_jsonl(tmp_path / "emptyid.jsonl", [{"id": " ", "prompt": "1", "response": "2"}])
    with pytest.raises(DataError, match=r"emptyid\.jsonl: line 1: empty id"):
        load_dataset(p)


def test_non_utf8(tmp_path):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "x"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl: line 2 is not valid UTF-8"):
        load_dataset(p)
    p = tmp_path / "latin1.csv"
    p.write_bytes(b"prompt,completion\na,b\nc,d\n\xe9,x\n")
    with pytest.raises(DataError, match=r"latin1\.csv: line 4 is not valid UTF-8"):
        load_dataset(p)


def test_csv_wrong_field_count(tmp_path):
    p = tmp_path / "fields.csv"
    p.write_text("prompt,completion\na,b\n\"c, with comma\",d,extra\n")
    with pytest.raises(DataError, match=r"fields\.csv: row 2 \(line 3\) has 3 fields, the header "
                                        r"has 2"):
        load_dataset(p)
    p.write_text("prompt,prompt\na,b\n")
    with pytest.raises(DataError, match=r"fields\.csv: the header names columns twice"):
        load_dataset(p)


def test_other_bad_files(tmp_path):
    (tmp_path / "arr.json").write_text('[{"prompt": "a", "completion": "b"}, 3]')
    with pytest.raises(DataError, match=r"arr\.json: item 1 of the array is a int"):
        load_dataset(tmp_path / "arr.json")
    (tmp_path / "broken.json").write_text('[{"prompt": "a",\n "completion": }]')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON .* line 2"):
        load_dataset(tmp_path / "broken.json")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        load_dataset(tmp_path / "empty.jsonl")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty\.csv: the CSV file is empty"):
        load_dataset(tmp_path / "empty.csv")
    (tmp_path / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"x\.parquet: not a readable Parquet file"):
        load_dataset(tmp_path / "x.parquet")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: unknown file type '\.txt'"):
        load_dataset(tmp_path / "notes.txt")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.jsonl")
    p = write_jsonl(tmp_path / "nested.jsonl", [{"prompt": {"a": 1}, "completion": "b"}])
    with pytest.raises(DataError, match=r"nested\.jsonl: line 1: column 'prompt' holds a dict"):
        load_dataset(p)
    p = write_jsonl(tmp_path / "noassist.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(DataError, match=r"noassist\.jsonl: line 1: 'messages' has no assistant"):
        load_dataset(p)
    p = write_jsonl(tmp_path / "turns.jsonl", [{"messages": [{"role": "user"}]}])
    with pytest.raises(DataError, match=r"turns\.jsonl: line 1: turn 0 of 'messages' lacks"):
        load_dataset(p)


# ----------------------------------------------------------------------------------------------
# Demo and real data


def test_demo_sets():
    pool = load_dataset("demo:pool")
    assert len(pool) == 240 and not pool.skipped and pool.layout == "alpaca"
    assert pool.ids[0] == "pool-0001" and len(set(pool.ids)) == 240
    assert {"id", "family", "instruction", "input", "output"} <= set(pool.columns)
    assert len(load_dataset("demo:target")) == 40
    assert len(load_dataset("demo:existing")) == 60
    with pytest.raises(DataError, match="unknown demo set"):
        load_dataset("demo:nothing")


def test_subset_keeps_rows_ids_and_positions():
    pool = load_dataset("demo:pool")
    sub = pool.subset([5, 2, 9])
    assert sub.ids == [pool.ids[5], pool.ids[2], pool.ids[9]]
    assert sub.rows[0] is pool.rows[5] and sub.positions == [5, 2, 9]
    assert pool.index_of(pool.ids[9]) == 9


def test_real_reference_data(shared_data):
    p3 = load_dataset(shared_data / "p3_sample.jsonl")
    assert p3.layout == "prompt_completion" and len(p3) > 1000
    assert p3.ids[0].startswith("p3-") and "template" in p3.columns
    gsm = load_dataset(shared_data / "gsm8k_test.jsonl")
    assert gsm.layout == "question_answer" and len(gsm) + len(gsm.skipped) == 1319
    assert "####" in gsm.responses[0]
    code = load_dataset(shared_data / "code_alpaca_2k.json")
    assert code.layout == "alpaca" and code.source_format == "json"
    raw = json.loads((shared_data / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    assert len(code) + len(code.skipped) == len(raw)
    assert len(code.skipped) == sum(1 for r in raw if not r["output"].strip())
    assert code.ids[:3] == ["0", "1", "2"]
    seed = load_dataset(shared_data / "self_instruct_seed_tasks.jsonl")
    n_lines = sum(1 for line in open(shared_data / "self_instruct_seed_tasks.jsonl") if line.strip())
    assert seed.layout == "alpaca" and len(seed) + len(seed.skipped) == n_lines
