//! Group commit for publishes: concurrent publish calls on a node share one transaction and
//! one commit, as the embedded store's do. One task gathers the calls into groups and hands
//! each to a free writer ([`WRITERS`] of them). A call that finds every writer idle is
//! written at once, alone, so a lone publish waits for nothing; calls that arrive while
//! writers are busy queue up and go together in the next group, up to [`MAX_REQUESTS`] calls
//! or about [`MAX_EVENTS`] events. Under load, a writer freed while another is still
//! writing gathers a small group for [`GATHER`] more: otherwise it would take whichever call
//! came first alone, and a commit's cost would be shared by one publish. The commit waits
//! for the WAL flush as the server is configured to (Herald never turns
//! `synchronous_commit` off here), and nobody is answered before it.
//!
//! A group is written with the statements of a single publish, each carrying every call's
//! rows. Should they fail for anything but a lost database, the group is written again in one
//! transaction with each call in a savepoint of its own: the call that fails is rolled back
//! and answered with its own error, and the others still share the commit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::history::History;
use super::listen::Announcer;
use super::queue::{self, PublishRequest};
use crate::crashpoint;
use crate::metrics::CommitMetrics;
use crate::store::{Published, StoreError, StoreResult};

/// Most calls committed together: bounds what one commit adds to its first caller's wait.
pub const MAX_REQUESTS: usize = 256;
/// A group takes no further call once it holds this many events.
pub const MAX_EVENTS: usize = 5_000;
const QUEUE_DEPTH: usize = 4_096;
/// How long a writer freed while another is busy gathers a group smaller than
/// [`SMALL_GROUP`]. Measured in S9 (64 single publishes at once): without it, over a quarter
/// of the commits carried one publish. Each node of a cluster sees only its share of the
/// publishers, and its groups were half as large as one node's, each with a commit and
/// statements of its own; gathering up to 32 calls for up to 2 ms made S9 on two nodes
/// faster and cost the server less per event (see `BENCHMARKS.md`).
pub const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
const SMALL_GROUP: usize = 32;
/// Groups written at once: while one waits for its commit, the next is written, and large
/// batches are inserted by two server processes rather than one. Measured on two cores
/// shared with the server: two writers made batch publishes (S7) about 10% faster than one
/// and single publishes (S9) no slower; four, no faster than two.
pub const WRITERS: usize = 2;

type Answer = StoreResult<Vec<Published>>;

struct Call {
    request: PublishRequest,
    reply: oneshot::Sender<Answer>,
}

/// The handle publishes go through; the writing task ends once it is dropped.
pub struct GroupCommit {
    queue: mpsc::Sender<Call>,
    waiting: Arc<AtomicUsize>,
}

impl GroupCommit {
    pub fn start(
        pool: Pool,
        announcer: Announcer,
        metrics: CommitMetrics,
        history: Arc<History>,
    ) -> GroupCommit {
        let (queue, calls) = mpsc::channel(QUEUE_DEPTH);
        let waiting = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write(
            calls,
            pool,
            announcer,
            metrics,
            history,
            waiting.clone(),
        ));
        GroupCommit { queue, waiting }
    }

    /// Publishes `request` in the next group commit; answers once it is committed.
    pub async fn publish(&self, request: PublishRequest) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if self.queue.send(Call { request, reply }).await.is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Closed);
        }
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Calls queued for the next group, not yet taken by a writer (for tests: a call dropped
    /// while the queue is full stays counted).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

async fn write(
    mut calls: mpsc::Receiver<Call>,
    pool: Pool,
    announcer: Announcer,
    metrics: CommitMetrics,
    history: Arc<History>,
    waiting: Arc<AtomicUsize>,
) {
    let writers = Arc::new(Semaphore::new(WRITERS));
    loop {
        // A group is gathered only once a writer is free to take it.
        let Ok(writer) = writers.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = calls.recv().await else {
            return;
        };
        let mut events = first.request.events.len();
        let mut group = vec![first];
        while group.len() < MAX_REQUESTS && events < MAX_EVENTS {
            let Ok(next) = calls.try_recv() else { break };
            events += next.request.events.len();
            group.push(next);
        }
        // Another writer busy: publishes are arriving faster than one writer commits them.
        if group.len() < SMALL_GROUP && writers.available_permits() + 1 < WRITERS {
            let until = tokio::time::Instant::now() + GATHER;
            while group.len() < SMALL_GROUP && events < MAX_EVENTS {
                let Ok(Some(next)) = tokio::time::timeout_at(until, calls.recv()).await else {
                    break;
                };
                events += next.request.events.len();
                group.push(next);
            }
        }
        waiting.fetch_sub(group.len(), Ordering::SeqCst);
        let (pool, announcer, metrics) = (pool.clone(), announcer.clone(), metrics.clone());
        let history = history.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (requests, replies): (Vec<_>, Vec<_>) =
                group.into_iter().map(|c| (c.request, c.reply)).unzip();
            let latest = requests.iter().map(|r| r.now).max().unwrap_or_default();
            let answers = match history.roll(latest).await {
                Ok(()) => commit(&pool, &announcer, &requests).await,
                Err(e) => requests.iter().map(|_| Err(copy(&e))).collect(),
            };
            drop(writer);
            metrics.committed(requests.len(), started.elapsed());
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have gone away (a dropped request); its events are committed
                // anyway.
                let _ = reply.send(answer);
            }
        });
    }
}

/// Writes and commits `requests` together; gives each its answer, in order.
async fn commit(pool: &Pool, announcer: &Announcer, requests: &[PublishRequest]) -> Vec<Answer> {
    let mut due = Vec::new();
    let answers = match together(pool, requests, &mut due).await {
        Ok(published) => published.into_iter().map(Ok).collect(),
        Err(e) if requests.len() > 1 && !matches!(e, StoreError::Unavailable(_)) => {
            tracing::debug!(error = %e, calls = requests.len(), "a group of publishes failed; writing each in a savepoint");
            due.clear();
            match each_in_a_savepoint(pool, requests, &mut due).await {
                Ok(answers) => answers,
                Err(e) => requests.iter().map(|_| Err(copy(&e))).collect(),
            }
        }
        Err(e) => requests.iter().map(|_| Err(copy(&e))).collect(),
    };
    announcer.due(due);
    for (request, answer) in requests.iter().zip(&answers) {
        if matches!(answer, Ok(published) if !published.is_empty()) {
            announcer.events(&request.tenant_id);
        }
    }
    answers
}

async fn together(
    pool: &Pool,
    requests: &[PublishRequest],
    due: &mut Vec<String>,
) -> StoreResult<Vec<Vec<Published>>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let published = queue::publish_all(&tx, requests, due).await?;
    crashpoint::hit(crashpoint::POSTGRES_PUBLISH_BEFORE_COMMIT);
    tx.commit().await?;
    crashpoint::hit(crashpoint::POSTGRES_PUBLISH_AFTER_COMMIT);
    Ok(published)
}

/// The group again, each call in a savepoint: one that fails is rolled back alone and keeps
/// its error. A failure of the transaction itself fails them all.
async fn each_in_a_savepoint(
    pool: &Pool,
    requests: &[PublishRequest],
    due: &mut Vec<String>,
) -> StoreResult<Vec<Answer>> {
    let mut client = pool.get().await?;
    let mut tx = client.transaction().await?;
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        let savepoint = tx.savepoint("publish").await?;
        let mut own_due = Vec::new();
        match queue::publish_all(&savepoint, std::slice::from_ref(request), &mut own_due).await {
            Ok(mut published) => {
                savepoint.commit().await?;
                due.extend(own_due);
                answers.push(Ok(published.pop().unwrap_or_default()));
            }
            Err(e) => {
                savepoint.rollback().await?;
                answers.push(Err(e));
            }
        }
    }
    crashpoint::hit(crashpoint::POSTGRES_PUBLISH_BEFORE_COMMIT);
    tx.commit().await?;
    crashpoint::hit(crashpoint::POSTGRES_PUBLISH_AFTER_COMMIT);
    Ok(answers)
}

/// The same error for another caller of the group.
fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Commit(m) => StoreError::Commit(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Postgres(other.to_string()),
    }
}
