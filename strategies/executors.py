"""Where attacks run: inline (blocking), a background thread, or Ray tasks — one interface.

An executor receives one round's audit jobs at a time. It hands the jobs' observations (the
shared payload; the originals never leave the clients) to ``semsim_audit.attacks.run_attacks``, one
call per group of jobs that can share a batched optimisation, then gives each result to the
callback that sends it to its client for scoring. A batch that raises is retried job by job, so
one bad job fails alone; a job that raises or runs out of memory comes back as a failed audit
with the reason. The result is a ``concurrent.futures.Future`` of the round's ``ClientAudit`` list.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from semsim_audit.attacks import Observation, batch_groups, run_attacks
from semsim_audit.report import ClientAudit

__all__ = [
    "AuditJob", "Executor", "InlineExecutor", "ThreadExecutor", "RayExecutor", "make_executor",
    "run_jobs", "group_jobs",
]

ScoreFn = Callable[["AuditJob", Any], ClientAudit]
# run_attacks' shape: (attack, observations, config); called with a ``progress=`` keyword too when the
# executor was handed a progress callback.
AttackFn = Callable[..., list[Any]]
# progress(iterations done, iterations in all) over all of one round's attack calls.
ProgressFn = Callable[[int, int], None]


@dataclass
class AuditJob:
    """One client's update to attack, and what the report says about it."""

    server_round: int
    node_id: int
    observation: Observation  # the shared payload only
    num_images: int  # distinct images the client trained on
    local_steps: int | None = None  # the training attacked
    batch_size: int | None = None
    scoring_handler: bool = False  # the client answers query.semsim_audit messages
    note: str | None = None
    client_key: str | None = None  # what the client reports as its stable key (partition id)


def group_jobs(jobs: Sequence[AuditJob], batch: bool = True) -> list[list[int]]:
    """Indices of jobs that can share one ``run_attacks`` call (same model and observation shape)."""
    if not batch or len(jobs) < 2:
        return [[i] for i in range(len(jobs))]
    return [list(group) for group in batch_groups([job.observation for job in jobs])]


def _failed(job: AuditJob, attack: str, reason: str, seconds: float = 0.0) -> ClientAudit:
    return ClientAudit(node_id=job.node_id, client_key=job.client_key, attack=attack, status="failed",
                       reason=reason, note=job.note,
                       seconds=seconds, num_images=job.num_images,
                       local_steps=job.local_steps, batch_size=job.batch_size)


def _describe(error: BaseException) -> str:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "attack ran out of GPU memory"
    return f"attack raised {type(error).__name__}: {error}"


def run_jobs(jobs: Sequence[AuditJob], attack: str, config: Any, score: ScoreFn, *,
             batch: bool = True, attack_fn: AttackFn | None = None,
             results_for: Callable[[list[int]], list[Any]] | None = None,
             progress: ProgressFn | None = None) -> list[ClientAudit]:
    """Attack and score ``jobs``; every job gets a ClientAudit, failed ones with a reason.

    ``results_for`` replaces the local attack call (the Ray executor fetches remote results).
    ``progress(done, total)`` hears the attack's iterations, summed over the groups (each group
    counts as one share of the total; a group retried job by job starts its share again).
    """
    attack_fn = attack_fn or run_attacks
    shares = {"done": 0, "count": 1}

    def attack_group(group: list[int]) -> list[Any]:
        if results_for is not None:
            return results_for(group)
        observations = [jobs[i].observation for i in group]
        if progress is None:
            return list(attack_fn(attack, observations, config))
        before = shares["done"]

        def share(done: int, total: int) -> None:
            progress(before * total + done, shares["count"] * total)

        return list(attack_fn(attack, observations, config, progress=share))

    audits: list[ClientAudit | None] = [None] * len(jobs)
    if results_for is not None:  # the caller already grouped these jobs into one call
        groups = [list(range(len(jobs)))]
    else:
        try:
            groups = group_jobs(jobs, batch)
        except Exception:  # grouping is an optimisation: fall back to one job per call
            groups = [[i] for i in range(len(jobs))]
    shares["count"] = len(groups)
    for number, group in enumerate(groups):
        shares["done"] = number
        started = time.perf_counter()
        try:
            results = attack_group(group)
            if len(results) != len(group):
                raise RuntimeError(f"{len(results)} results for {len(group)} observations")
        except Exception as error:
            if len(group) > 1 and results_for is None:
                # Retry alone: an error (or OOM) of the batch should not fail every client.
                for index in group:
                    audits[index] = run_jobs([jobs[index]], attack, config, score, batch=False,
                                             attack_fn=attack_fn)[0]
                continue
            elapsed = time.perf_counter() - started
            for index in group:
                audits[index] = _failed(jobs[index], attack, _describe(error), elapsed)
            continue
        for index, result in zip(group, results, strict=True):
            try:
                audit = score(jobs[index], result)
                # A batched optimisation reports its wall time on every result: split it, so
                # that a round's attack seconds add up to the time spent.
                audit.seconds = float(getattr(result, "seconds", 0.0) or 0.0) / len(group)
                audits[index] = audit
            except Exception as error:
                audits[index] = _failed(jobs[index], attack,
                                        f"scoring raised {type(error).__name__}: {error}",
                                        float(getattr(result, "seconds", 0.0) or 0.0))
    return [audit for audit in audits if audit is not None]


class Executor(ABC):
    """Runs one round's jobs and returns a Future of their ClientAudits (in job order)."""

    name: str = "executor"

    def __init__(self, *, batch: bool = True, attack_fn: AttackFn | None = None) -> None:
        self.batch = batch
        self.attack_fn = attack_fn

    @abstractmethod
    def submit(self, jobs: Sequence[AuditJob], attack: str, config: Any,
               score: ScoreFn, progress: ProgressFn | None = None) -> Future[list[ClientAudit]]:
        """Start the round's audits; the Future completes with one ClientAudit per job.

        ``progress(done, total)``, when given, hears the attack's iterations as they go (local
        executors; Ray tasks report only when they finish)."""

    @abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """Release the workers; ``wait=False`` cancels jobs not yet started."""


class InlineExecutor(Executor):
    """Attacks in the calling thread: aggregate_train returns after the audit (simple, deterministic)."""

    name = "inline"

    def shutdown(self, wait: bool = True) -> None:
        """Nothing to release: every job ran when it was submitted."""

    def submit(self, jobs: Sequence[AuditJob], attack: str, config: Any,
               score: ScoreFn, progress: ProgressFn | None = None) -> Future[list[ClientAudit]]:
        future: Future[list[ClientAudit]] = Future()
        try:
            future.set_result(run_jobs(jobs, attack, config, score, batch=self.batch,
                                       attack_fn=self.attack_fn, progress=progress))
        except BaseException as error:  # surfaced by the wrapper as failed audits
            future.set_exception(error)
        return future


class ThreadExecutor(Executor):
    """One background worker: training goes on while the previous round is attacked.

    On CUDA the worker runs its attacks on its own stream, so they overlap the training kernels
    instead of queueing behind them on the default stream.
    """

    name = "thread"

    def __init__(self, *, device: torch.device | str = "cpu", batch: bool = True,
                 attack_fn: AttackFn | None = None) -> None:
        super().__init__(batch=batch, attack_fn=attack_fn)
        self.device = torch.device(device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semsim-audit")
        self._stream: Any = None

    def _work(self, jobs: Sequence[AuditJob], attack: str, config: Any,
              score: ScoreFn, progress: ProgressFn | None) -> list[ClientAudit]:
        if self.device.type != "cuda":
            return run_jobs(jobs, attack, config, score, batch=self.batch, attack_fn=self.attack_fn,
                            progress=progress)
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        with torch.cuda.stream(self._stream):
            audits = run_jobs(jobs, attack, config, score, batch=self.batch, attack_fn=self.attack_fn,
                              progress=progress)
        self._stream.synchronize()
        return audits

    def submit(self, jobs: Sequence[AuditJob], attack: str, config: Any,
               score: ScoreFn, progress: ProgressFn | None = None) -> Future[list[ClientAudit]]:
        return self._pool.submit(self._work, list(jobs), attack, config, score, progress)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


class RayExecutor(Executor):
    """Attacks as Ray tasks with ``num_cpus``/``num_gpus`` on the running Ray instance (the one
    Flower's simulation started), or on the cluster at ``address``. Only observations travel to
    Ray; a local thread collects the results and scores them here, where the originals are."""

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: float = 1.0,
                 num_gpus: float | None = None, resources: dict[str, float] | None = None,
                 batch: bool = True, attack_fn: AttackFn | None = None) -> None:
        super().__init__(batch=batch, attack_fn=attack_fn)
        self.address = address
        self.num_cpus = num_cpus
        self.resources = dict(resources or {})
        self.num_gpus = num_gpus if num_gpus is not None else (1.0 if torch.cuda.is_available() else 0.0)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semsim-audit-ray")
        self._remote: Any = None

    def connect(self) -> Any:
        """Join the running Ray instance (or the one at ``address``, or start one); returns ``ray``."""
        import ray  # only this executor needs Ray, and importing it takes seconds

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False, ignore_reinit_error=True)
        if self._remote is None:
            attack_fn = self.attack_fn or run_attacks
            self._remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                      resources=self.resources or None)(
                lambda attack, observations, config: list(attack_fn(attack, observations, config)))
        return ray

    def submit(self, jobs: Sequence[AuditJob], attack: str, config: Any,
               score: ScoreFn, progress: ProgressFn | None = None) -> Future[list[ClientAudit]]:
        ray = self.connect()
        jobs = list(jobs)
        try:
            groups = group_jobs(jobs, self.batch)
        except Exception:
            groups = [[i] for i in range(len(jobs))]
        # Submit now so the cluster works while this process trains; collect in the thread.
        refs = {tuple(g): self._remote.remote(attack, [jobs[i].observation for i in g], config)
                for g in groups}

        def collect() -> list[ClientAudit]:
            audits: list[ClientAudit] = [None] * len(jobs)  # type: ignore[list-item]
            finished = 0
            for group, ref in refs.items():
                subset = [jobs[i] for i in group]
                done = run_jobs(subset, attack, config, score,
                                results_for=lambda _idx, ref=ref: list(ray.get(ref)))
                for index, audit in zip(group, done, strict=True):
                    audits[index] = audit
                finished += len(group)
                if progress is not None:  # a Ray task reports when it is done, not as it goes
                    progress(finished, len(jobs))
            return audits

        return self._pool.submit(collect)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)


def make_executor(kind: str, *, device: torch.device | str = "cpu", batch: bool = True,
                  ray_address: str | None = None, ray_num_cpus: float = 1.0,
                  ray_num_gpus: float | None = None) -> Executor:
    """Build an executor by name: ``inline``, ``thread`` or ``ray``."""
    if kind == "inline":
        return InlineExecutor(batch=batch)
    if kind == "thread":
        return ThreadExecutor(device=device, batch=batch)
    if kind == "ray":
        return RayExecutor(address=ray_address, num_cpus=ray_num_cpus, num_gpus=ray_num_gpus,
                           batch=batch)
    raise ValueError(f"unknown executor {kind!r}; use 'inline', 'thread' or 'ray'")
