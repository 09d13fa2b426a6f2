"""Executors: one interface; batches of compatible jobs, failures contained per job."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from semsim_audit.attacks import Observation
from semsim_audit.report import ClientAudit
from semsim_audit.strategies.executors import (
    AuditJob,
    InlineExecutor,
    ThreadExecutor,
    group_jobs,
    make_executor,
    run_jobs,
)


def _jobs(setup, count: int = 3) -> list[AuditJob]:
    model = setup.model_fn()
    gradients = [torch.zeros_like(p) for p in model.parameters()]
    return [AuditJob(server_round=1, node_id=node, observation=Observation.from_gradients(model, gradients,
                                                                                          setup.spec),
                     num_images=1)
            for node in range(count)]


def _result(seconds: float = 2.0) -> SimpleNamespace:
    return SimpleNamespace(images=torch.rand(1, 3, 32, 32), labels=torch.tensor([0]), seconds=seconds,
                           status="ok", reason=None, loss=0.0)


def _score(job: AuditJob, result: Any) -> ClientAudit:
    return ClientAudit(node_id=job.node_id, attack="idlg", status="ok", seconds=result.seconds)


def test_compatible_jobs_share_one_attack_call(setup) -> None:
    calls: list[int] = []

    def attack(name: str, observations: list[Any], config: Any) -> list[Any]:
        calls.append(len(observations))
        return [_result() for _ in observations]

    jobs = _jobs(setup)
    assert group_jobs(jobs) == [[0, 1, 2]] and group_jobs(jobs, batch=False) == [[0], [1], [2]]
    audits = run_jobs(jobs, "idlg", None, _score, attack_fn=attack)
    assert calls == [3]
    assert [a.node_id for a in audits] == [0, 1, 2]
    assert sum(a.seconds for a in audits) == pytest.approx(2.0)  # the batch's time, split


def test_a_failing_batch_is_retried_job_by_job(setup) -> None:
    def attack(name: str, observations: list[Any], config: Any) -> list[Any]:
        if len(observations) > 1:
            raise torch.cuda.OutOfMemoryError("too big together")
        if observations[0] is jobs[1].observation:
            raise ValueError("this one is bad")
        return [_result()]

    jobs = _jobs(setup)
    audits = run_jobs(jobs, "idlg", None, _score, attack_fn=attack)
    assert [a.status for a in audits] == ["ok", "failed", "ok"]
    assert audits[1].reason == "attack raised ValueError: this one is bad"


def test_out_of_memory_is_named(setup) -> None:
    def attack(name: str, observations: list[Any], config: Any) -> list[Any]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    audits = run_jobs(_jobs(setup, 1), "idlg", None, _score, attack_fn=attack)
    assert audits[0].status == "failed" and "out of GPU memory" in audits[0].reason


def test_wrong_result_count_and_scoring_errors_fail_the_job(setup) -> None:
    short = run_jobs(_jobs(setup, 1), "idlg", None, _score, attack_fn=lambda n, o, c: [])
    assert short[0].status == "failed" and "0 results" in short[0].reason

    def bad_score(job: AuditJob, result: Any) -> ClientAudit:
        raise ValueError("cannot score")

    scored = run_jobs(_jobs(setup, 1), "idlg", None, bad_score, attack_fn=lambda n, o, c: [_result()])
    assert scored[0].status == "failed" and "scoring raised ValueError" in scored[0].reason


def test_inline_runs_before_submit_returns(setup) -> None:
    future = InlineExecutor(attack_fn=lambda n, o, c: [_result() for _ in o]).submit(_jobs(setup), "idlg",
                                                                                   None, _score)
    assert future.done() and len(future.result()) == 3


def test_thread_executor_works_in_the_background(setup) -> None:
    started, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def attack(name: str, observations: list[Any], config: Any) -> list[Any]:
        threads.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return [_result() for _ in observations]

    executor = ThreadExecutor(attack_fn=attack)
    future = executor.submit(_jobs(setup), "idlg", None, _score)
    assert started.wait(10) and not future.done()  # submit returned while the attack runs
    release.set()
    assert [a.status for a in future.result(timeout=10)] == ["ok"] * 3
    assert threads[0].startswith("semsim-audit") and threads[0] != threading.current_thread().name
    executor.shutdown()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_thread_executor_attacks_on_its_own_cuda_stream(setup) -> None:
    streams = []

    def attack(name: str, observations: list[Any], config: Any) -> list[Any]:
        streams.append(torch.cuda.current_stream())
        return [_result() for _ in observations]

    executor = ThreadExecutor(device="cuda", attack_fn=attack)
    executor.submit(_jobs(setup, 1), "idlg", None, _score).result(timeout=60)
    assert streams[0] != torch.cuda.default_stream()
    executor.shutdown()


def test_unknown_executor_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown executor 'grid'"):
        make_executor("grid")


def test_progress_counts_every_groups_iterations_in_one_total(setup) -> None:
    heard: list[tuple[int, int]] = []

    def attack(name: str, observations: list[Any], config: Any, progress: Any = None) -> list[Any]:
        for done in range(1, 11):
            progress(done, 10)
        return [_result() for _ in observations]

    run_jobs(_jobs(setup), "idlg", None, _score, batch=False, attack_fn=attack,
             progress=lambda done, total: heard.append((done, total)))
    assert {total for _, total in heard} == {30}  # three groups of ten iterations
    assert [done for done, _ in heard] == list(range(1, 31))


def test_the_real_attack_reports_progress_through_an_executor(setup) -> None:
    from semsim_audit.attacks import AttackConfig

    heard: list[tuple[int, int]] = []
    future = InlineExecutor().submit(_jobs(setup, 2), "inverting-gradients", AttackConfig(iterations=20),
                                     _score, progress=lambda done, total: heard.append((done, total)))
    assert len(future.result()) == 2
    assert heard and heard[-1] == (20, 20) and len(heard) > 1
    assert all(a[0] <= b[0] for a, b in zip(heard, heard[1:], strict=False))
