"""Round bookkeeping: finished rounds leave in order, once; unfinished audits fail with the reason."""

from __future__ import annotations

from concurrent.futures import Future

from flwr.app import ArrayRecord

from semsim_audit.report import ClientAudit, RoundRecord
from semsim_audit.strategies.rounds import RoundBook, Sent


def _book() -> tuple[RoundBook, list[RoundRecord]]:
    finished: list[RoundRecord] = []
    return RoundBook("idlg", finished.append), finished


def test_rounds_leave_in_order_once_evaluated_and_audited() -> None:
    book, finished = _book()
    first, second = Future(), Future()
    book[1].sent[7] = Sent(ArrayRecord(), {})
    book[1].future = first
    book[2].sent[7] = Sent(ArrayRecord(), {})
    book[2].future = second
    book.evaluated_before(3)
    second.set_result([ClientAudit(node_id=7, attack="idlg", status="ok")])
    book.flush()
    assert finished == []  # round 2's audit is done, but round 1 still runs: nothing leaves yet
    first.set_result([ClientAudit(node_id=7, attack="idlg", status="ok")])
    book.flush()
    book.flush()
    assert [r.round for r in finished] == [1, 2]


def test_an_unevaluated_round_waits_and_central_metrics_win() -> None:
    book, finished = _book()
    book.set_metrics(1, 0.5, 1.0, central=True)
    book.set_metrics(1, 0.1, 9.0, central=False)
    book.flush()
    assert finished == []
    book.evaluated_before(2)
    book.flush()
    assert (finished[0].accuracy, finished[0].loss, finished[0].status) == (0.5, 1.0, "not audited")


def test_close_fails_audits_still_running_with_the_timeout_reason() -> None:
    book, finished = _book()
    book[1].sent[3] = Sent(ArrayRecord(), {})
    book[1].future = Future()  # never finishes
    book.close(timeout=0.0)
    [record] = finished
    assert record.status == "failed"
    assert record.clients[0].reason == "audit did not finish within the 0 s timeout"


def test_a_round_waits_for_its_clients_scores() -> None:
    unscored = {1}
    finished: list[RoundRecord] = []
    book = RoundBook("idlg", finished.append, waiting=lambda server_round: server_round in unscored)
    book[1].future = Future()
    book[1].future.set_result([ClientAudit(node_id=7, attack="idlg", status="ok")])
    book.evaluated_before(2)
    book.flush()
    assert finished == []  # attacked and evaluated, but its reconstructions are not scored yet
    unscored.clear()
    book.flush()
    assert [r.round for r in finished] == [1]


def test_machinery_errors_are_kept_on_their_round() -> None:
    book, finished = _book()
    book.add_error(1, "report sink X failed")
    book.evaluated_before(2)
    book.flush()
    book.add_error(1, "too late: round 1 is written")
    assert finished[0].errors == ["report sink X failed"]
