import json

import pytest

from semsim_audit.report import (
    ClientAudit,
    JsonlSink,
    LogSink,
    PrivacyReport,
    ReconstructionScore,
    RoundRecord,
    format_value,
    leakage_rate,
    mean,
    read_jsonl,
)


def _round(number: int, semsims: list[float], recognizable: list[bool]) -> RoundRecord:
    scores = [ReconstructionScore(original_index=i, semsim=s, recognizable=r, psnr=20.0 + i, ssim=0.5)
              for i, (s, r) in enumerate(zip(semsims, recognizable, strict=True))]
    clients = [
        ClientAudit(node_id=11, attack="inverting-gradients", status="ok", seconds=2.0, scores=scores),
        ClientAudit(node_id=12, attack="inverting-gradients", status="failed", reason="diverged (NaN)",
                    seconds=1.0),
    ]
    return RoundRecord(round=number, accuracy=0.5, loss=1.2, clients=clients).summarise()


def test_round_aggregates_use_only_successful_audits():
    record = _round(1, [0.2, 0.9], [True, False])
    assert record.leakage_rate == 0.5
    assert record.mean_semsim == pytest.approx(0.55)
    assert record.mean_psnr == pytest.approx(20.5)
    assert record.mean_lpips is None
    assert record.attack_seconds == 3.0
    assert record.worst_client == 11
    assert record.status == "partial"


def test_round_without_audits_is_marked_not_audited():
    assert RoundRecord(round=3, accuracy=0.7).summarise().status == "not audited"


def test_jsonl_round_trip_and_truncated_last_line(tmp_path):
    path = tmp_path / "report.jsonl"
    report = PrivacyReport(attack="dlg", semsim={"annotator": "proxy", "threshold": 0.7})
    sink = JsonlSink(path)
    sink.start(report)
    for number in (1, 2):
        record = _round(number, [0.1 * number, 0.8], [True, number == 2])
        report.add_round(record)
        sink.write_round(record)
    restored = read_jsonl(path)
    assert restored == report
    assert restored.checkpoint_kind == "proxy"
    assert restored.worst_round().round == 2

    # A run killed while writing round 3 leaves half a line: the two finished rounds still read.
    line = json.dumps({"type": "round", **_round(3, [0.3], [True]).model_dump(mode="json")})
    with path.open("a") as handle:
        handle.write(line[: len(line) // 2])
    assert [r.round for r in read_jsonl(path).rounds] == [1, 2]


def test_a_corrupt_journal_names_file_and_line(tmp_path):
    path = tmp_path / "report.jsonl"
    path.write_text('{"type": "run"}\nnot json\n{"type": "round", "round": 1}\n')
    with pytest.raises(ValueError, match=r"report.jsonl:2: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(ValueError, match="no report journal"):
        read_jsonl(tmp_path / "missing.jsonl")


def test_log_sink_writes_one_line_per_round():
    lines: list[str] = []
    sink = LogSink(lines.append)
    report = PrivacyReport()
    sink.start(report)
    sink.write_round(_round(1, [0.2], [True]))
    report.add_round(_round(1, [0.2], [True]))
    sink.close(report)
    assert len(lines) == 3
    assert "round 1: accuracy=0.5000 clients=2 leakage=1.00" in lines[1]


def test_unknown_values_are_left_out_of_means_and_rates():
    assert mean([1.0, None, float("inf"), 3.0]) == 2.0
    assert mean([None, float("nan")]) is None
    flags = [True, None, False]
    scores = [ReconstructionScore(original_index=i, recognizable=r) for i, r in enumerate(flags)]
    assert leakage_rate(scores) == 0.5
    assert leakage_rate(scores[1:2]) is None


def test_format_value_says_n_a_for_unknown_values():
    assert format_value(0.1234, ".1%") == "12.3%"
    assert format_value(18.25, ".1f", " dB") == "18.2 dB"
    assert format_value(None, ".1f", " dB") == "n/a"
