"""The work queue's SQL on a real PostgreSQL: one job per content and chain, leases, reclaim, status."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from extractkit.ledger import EnqueueCounts, Finished, QueuedDocument, WorkQueue


def _docs(n: int, prefix: str = "d") -> list[QueuedDocument]:
    return [QueuedDocument(sha256=f"{prefix}{i:04d}", source=f"/docs/{prefix}{i}.txt", doc_type="txt")
            for i in range(n)]  # fmt: skip


@pytest.fixture
def queue(pg_url):
    q = WorkQueue(pg_url)
    yield q
    q.close()


def test_enqueue_twice_is_one_job_per_content(queue):
    first = queue.enqueue(_docs(5), "S", "C")
    assert first.new == 5
    again = queue.enqueue(_docs(5) + _docs(2, "e"), "S", "C")
    assert (again.new, again.waiting) == (2, 5)
    # the same content at another path is the same job; another config is another job
    moved = [QueuedDocument(sha256="d0000", source="/elsewhere/x.txt")]
    assert queue.enqueue(moved, "S", "C").waiting == 1
    assert queue.enqueue(moved, "S", "C2").new == 1
    assert queue.status()["totals"]["jobs"] == 8


def test_concurrent_enqueues_make_one_job_each(pg_url):
    """Four processes' worth of connections enqueue the same documents at once: the unique key
    decides, every document is one job and the counts add up."""

    def one(_: int) -> EnqueueCounts:
        with WorkQueue(pg_url) as q:
            return q.enqueue(_docs(200), "S", "C")

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(one, range(4)))
    assert sum(c.new for c in counts) == 200
    assert all(c.new + c.waiting + c.in_flight == 200 for c in counts)
    with WorkQueue(pg_url) as q:
        assert q.status()["totals"]["jobs"] == 200


def test_claims_do_not_overlap_and_expired_leases_are_reclaimed(queue):
    queue.enqueue(_docs(10), "S", "C")
    queue.register("w1", lease_s=1)
    queue.register("w2", lease_s=30)
    a = queue.claim("w1", "S", "C", 6, lease_s=1)
    b = queue.claim("w2", "S", "C", 6, lease_s=30)
    assert len(a) == 6 and len(b) == 4
    assert not {j.id for j in a} & {j.id for j in b}
    assert queue.claim("w2", "S", "C", 6, lease_s=30) == []  # nothing waiting, no lease expired
    assert queue.claim("w2", "S", "C2", 6, lease_s=30) == []  # another chain's worker takes none
    time.sleep(1.5)  # w1 sends no heartbeat: its lease runs out
    assert queue.status()["totals"]["expired"] == 6
    c = queue.claim("w2", "S", "C", 10, lease_s=30)
    assert {j.id for j in c} == {j.id for j in a}
    assert all(j.reclaimed and j.attempts == 2 for j in c)
    # w1 comes back late: its marks no longer count
    assert queue.finish("w1", [Finished(a[0].id, True, "ok")]) == 0
    assert queue.finish("w2", [Finished(j.id, True, "ok") for j in c]) == 6
    assert queue.status()["totals"]["reclaims"] == 6


def test_heartbeat_keeps_the_lease(queue):
    queue.enqueue(_docs(3), "S", "C")
    queue.register("w1", lease_s=1)
    got = queue.claim("w1", "S", "C", 3, lease_s=1)
    for _ in range(4):
        time.sleep(0.4)
        assert queue.heartbeat("w1", 1) == 3
    assert queue.claim("w2", "S", "C", 3, lease_s=1) == []
    assert queue.release("w1") == 3
    assert [j.sha256 for j in queue.claim("w2", "S", "C", 3, lease_s=1)] == [j.sha256 for j in got]


def test_failed_jobs_are_queued_again_by_outcome(queue):
    queue.enqueue(_docs(3), "S", "C")
    jobs = queue.claim("w", "S", "C", 3, lease_s=30)
    queue.finish("w", [Finished(jobs[0].id, False, "failed", "rate_limited"),
                       Finished(jobs[1].id, False, "failed", "validation_error"),
                       Finished(jobs[2].id, False, "error", "missing")])  # fmt: skip
    counts = queue.enqueue(_docs(3), "S", "C", requeue_outcomes=["rate_limited"])
    assert (counts.requeued, counts.failed) == (2, 1)
    counts = queue.enqueue(_docs(3), "S", "C", requeue_outcomes=["validation_error"])
    assert (counts.requeued, counts.waiting) == (1, 2)


def test_status_counts_per_state_and_worker(queue):
    queue.enqueue(_docs(6), "S", "C")
    queue.register("w1", lease_s=30, concurrency=4)
    jobs = queue.claim("w1", "S", "C", 4, lease_s=30)
    queue.finish("w1", [Finished(jobs[0].id, True, "ok"), Finished(jobs[1].id, False, "failed", "refused")])
    s = queue.status()
    assert {k: s["totals"][k] for k in ("done", "failed", "in_flight", "waiting", "expired")} == {
        "done": 1, "failed": 1, "in_flight": 2, "waiting": 2, "expired": 0}
    (w,) = s["workers"]
    assert (w["id"], w["state"], w["done"], w["failed"], w["in_flight"]) == ("w1", "running", 1, 1, 2)
    assert w["per_minute"] > 0
    queue.stop("w1")
    assert queue.status()["workers"][0]["state"] == "stopped"
