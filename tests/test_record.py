"""The run record (metrics.json) as one typed model: errors name the file and field; docs stay in sync."""

import json
from pathlib import Path

import pytest

from pipelines import record
from pipelines.errors import TuneforgeError

FINISHED = {
    "schema": 1, "run": "r", "status": "finished", "task": "causal_lm", "method": "lora", "base_model": "b",
    "primary_metric": "perplexity", "greater_is_better": False,
    "dataset": {"name": "manpages", "split": "test", "num_examples": 3, "fingerprint": "f"},
    "scores": {"perplexity": 2.0}, "train": {"steps": 1, "seconds": 0.5}, "params": {"trainable": 1, "total": 2},
    "future_field": [1, 2],
}


def test_docs_table_is_generated_from_the_model():
    text = (Path(__file__).parents[1] / "docs" / "run-folder.md").read_text()
    assert record.document_fields() in text


def test_round_trip_keeps_every_key_and_value(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(FINISHED))
    rec = record.read_record(tmp_path)
    assert rec.train.seconds == 0.5 and rec.dataset.name == "manpages" and rec.schema_version == 1
    assert rec.as_dict() == FINISHED


@pytest.mark.parametrize(("change", "message"), [
    ({"dataset": {"split": "test"}}, "metrics.json lacks dataset.name"),
    ({"primary_metric": None}, "metrics.json lacks primary_metric"),
    ({"scores": [1.0]}, "metrics.json field scores: "),
    ({"train": {"steps": "many"}}, "metrics.json field train.steps: "),
    ({"schema": 2}, "schema 2 is newer than this tuneforge reads (1)"),
])
def test_malformed_or_older_record_names_file_and_field(tmp_path, change, message):
    (tmp_path / "metrics.json").write_text(json.dumps({**FINISHED, **change}))
    with pytest.raises(TuneforgeError) as caught:
        record.read_record(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "metrics.json"))
    assert message in str(caught.value)


def test_unreadable_json_is_a_record_error(tmp_path):
    (tmp_path / "metrics.json").write_text('{"schema": 1, "sta')
    with pytest.raises(record.RecordError, match="metrics.json unreadable"):
        record.read_record(tmp_path)
    assert record.read_record(tmp_path / "none") is None


def test_a_written_record_always_names_its_schema():
    assert record.RunRecord(status="running", base_scores={"loss": 1.0}).as_dict() == {
        "schema": 1, "status": "running", "base_scores": {"loss": 1.0}}


def test_write_result_writes_predictions_artifacts_metrics_and_card(tmp_path):
    from pipelines.scoring import Scored

    scored = Scored(scores={"accuracy": 1.0}, predictions=[{"id": 0, "prediction": "a"}],
                    artifacts={"extra.txt": lambda p: p.write_text("x")})
    out = record.write_result(tmp_path, record.RunRecord.model_validate(FINISHED), scored, "# card")
    assert out == FINISHED
    assert json.loads((tmp_path / "metrics.json").read_text()) == FINISHED
    assert (tmp_path / "predictions.jsonl").read_text() == '{"id": 0, "prediction": "a"}\n'
    assert (tmp_path / "extra.txt").read_text() == "x" and (tmp_path / "README.md").read_text() == "# card"
