//! The single writer and the readers of the embedded store.
//!
//! SQLite allows one writer at a time, and each commit costs an fsync. So every write goes to
//! one thread that owns the write connection: it takes every job waiting in its queue, runs
//! each inside its own savepoint (a failing job rolls back alone), commits them all with one
//! fsync, and only then answers each caller. Concurrent publishes therefore share commits
//! (group commit) and nobody is answered before their data is durable.
//!
//! Background jobs (the chunks of a large fan-out) never join a group: each commits alone,
//! and one runs only between groups, so a publish waits for at most the one chunk under way.
//! They also wait while the WAL is large and not yet copied back into the database (see
//! [`Checkpointer`]): written back to back, they would grow it until the writer had to
//! checkpoint by itself, and a publish would wait for that copy and its fsync.
//!
//! State kept in memory beside the database (the embedded store's leases) follows the same
//! transactions through a [`Journal`]: what a rolled-back job changed in it is undone too.
//!
//! Reads use a small pool of separate connections (WAL lets them run beside the writer).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::crashpoint;
use crate::metrics::CommitMetrics;
use crate::store::{StoreError, StoreResult};

/// Most jobs committed together. Bounds the latency one commit adds to the first caller.
const MAX_JOBS_PER_COMMIT: usize = 1024;
const QUEUE_DEPTH: usize = 8192;
/// A writer inside one commit for longer than this is stuck (a hung disk, a lock never given
/// back): readiness then fails, so that a load balancer sends the node no more work. The
/// longest legitimate commit (a group of `MAX_JOBS_PER_COMMIT`, a fan-out chunk) takes well
/// under a second.
const STALLED_AFTER: Duration = Duration::from_secs(30);

/// Whether a job's commit must reach the disk before its caller hears of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync before answering (`synchronous = FULL`): anything acknowledged to a client.
    Synced,
    /// Written to the WAL, synced with the next synced commit or checkpoint
    /// (`synchronous = NORMAL`). Survives the process being killed, not the machine losing
    /// power; for bookkeeping whose loss only means a delivery is attempted again (attempt
    /// outcomes).
    Lazy,
}

/// In-memory state that jobs change beside their rows, told where the writer's transactions
/// and savepoints begin and end so that it stands or falls with them.
pub trait Journal: Send + Sync {
    /// A job is about to run in its savepoint.
    fn begin_job(&self) {}
    /// The job that began last failed and was rolled back: to its savepoint, or with the
    /// whole transaction when it ran alone (then `committed` follows, with nothing to keep).
    fn undo_job(&self) {}
    /// The transaction committed (or a lone job's was rolled back, see `undo_job`).
    fn committed(&self) {}
    /// The transaction was rolled back, every job in it included.
    fn rolled_back(&self) {}
}

/// Nothing kept beside the database.
impl Journal for () {}

trait Job: Send {
    fn durability(&self) -> Durability;
    /// Runs alone, between the groups of other jobs.
    fn background(&self) -> bool;
    /// Runs inside the open transaction; false means the job failed and is rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the commit is known.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct TypedJob<F, T> {
    durability: Durability,
    background: bool,
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<F, T> Job for TypedJob<F, T>
where
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
    T: Send,
{
    fn durability(&self) -> Durability {
        self.durability
    }

    fn background(&self) -> bool {
        self.background
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let work = self.work.take().expect("a job runs once");
        let result = work(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let answer = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(e), Some(Err(job_err))) => Err(StoreError::Commit(format!(
                "{e}; the job itself failed: {job_err}"
            ))),
            (Err(e), _) => Err(StoreError::Commit(e)),
            (Ok(()), None) => Err(StoreError::Commit("the job was not run".into())),
        };
        // The caller may have gone away (a dropped request); its data is committed anyway.
        let _ = self.reply.send(answer);
    }
}

enum Message {
    Job(Box<dyn Job>),
    /// Background jobs may run again (the checkpointer caught up).
    Wake,
    /// Commit what came before, close the connection, then answer.
    Close(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Message>,
    /// Read by the group-commit test.
    #[cfg_attr(not(test), allow(dead_code))]
    commits: Arc<AtomicU64>,
    metrics: CommitMetrics,
    busy: Arc<Busy>,
    stalled_after: Duration,
    hold: Arc<HoldState>,
}

/// What the writer and its checkpointer share about background jobs.
#[derive(Default)]
struct HoldState {
    /// Background jobs may not run now.
    held: AtomicBool,
    /// Background jobs run so far: while none runs, holding them is not worth the
    /// checkpointer's catching up.
    runs: AtomicU64,
}

/// When the commit under way began, for readiness to tell a busy writer from a stuck one.
struct Busy {
    epoch: Instant,
    /// Milliseconds from `epoch` to the start of the commit under way, plus one; 0 when idle.
    since: AtomicU64,
}

impl Busy {
    fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// How long the commit under way has run, if there is one.
    fn current(&self) -> Option<Duration> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            since => Some(Duration::from_millis(
                self.elapsed_ms().saturating_sub(since),
            )),
        }
    }
}

impl Writer {
    /// Starts the writer thread on `conn`, with `journal` following its transactions. The
    /// thread ends when every `Writer` is dropped.
    pub fn start(conn: Connection, journal: Arc<dyn Journal>) -> Writer {
        Self::start_with_stall_limit(conn, journal, STALLED_AFTER)
    }

    fn start_with_stall_limit(
        conn: Connection,
        journal: Arc<dyn Journal>,
        stalled_after: Duration,
    ) -> Writer {
        let (queue, jobs) = mpsc::channel(QUEUE_DEPTH);
        let commits = Arc::new(AtomicU64::new(0));
        let counter = commits.clone();
        let metrics = CommitMetrics::default();
        let observed = metrics.clone();
        let busy = Arc::new(Busy {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
        });
        let marked = busy.clone();
        let hold = Arc::new(HoldState::default());
        let held = hold.clone();
        std::thread::Builder::new()
            .name("herald-sqlite-writer".into())
            .spawn(move || run(conn, &*journal, jobs, &counter, &observed, &marked, &held))
            .expect("spawning the store's writer thread");
        Writer {
            queue,
            commits,
            metrics,
            busy,
            stalled_after,
            hold,
        }
    }

    /// Starts checkpointing the database at `path` (which this writer writes), holding this
    /// writer's background jobs while the checkpointer catches up.
    pub fn start_checkpointer(&self, path: &Path) -> StoreResult<Checkpointer> {
        self.start_checkpointer_paced(path, CHECKPOINT_INTERVAL, HOLD_PAGES)
    }

    fn start_checkpointer_paced(
        &self,
        path: &Path,
        interval: Duration,
        hold_pages: i64,
    ) -> StoreResult<Checkpointer> {
        let hold = BackgroundHold {
            state: self.hold.clone(),
            writer: self.queue.downgrade(),
        };
        Checkpointer::start(path, hold, interval, hold_pages)
    }

    /// The sizes and times of its commits, for the metrics endpoint.
    pub fn commit_metrics(&self) -> CommitMetrics {
        self.metrics.clone()
    }

    /// Commits made so far (each one fsync).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `work` in the next group commit and returns its result once committed and synced.
    pub async fn write<F, T>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(Durability::Synced, false, work).await
    }

    /// Like `write`, but answers once committed, before the commit is synced to disk.
    pub async fn write_lazy<F, T>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(Durability::Lazy, false, work).await
    }

    /// Like `write_lazy`, for work that may wait: it commits on its own, after the jobs
    /// queued before it have been committed, and never holds them up by more than itself.
    pub async fn write_in_background<F, T>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(Durability::Lazy, true, work).await
    }

    async fn submit<F, T>(
        &self,
        durability: Durability,
        background: bool,
        work: F,
    ) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(TypedJob {
            durability,
            background,
            work: Some(work),
            result: None,
            reply,
        });
        self.queue
            .send(Message::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether the writer thread is still there to take work and not stuck in one commit
    /// (for readiness): a thread that died or hangs fails or holds every write while reads
    /// still succeed. Checked without queueing anything, so a long queue of writes does not
    /// make the store look down.
    pub fn ping(&self) -> StoreResult<()> {
        if self.queue.is_closed() {
            return Err(StoreError::Closed);
        }
        match self.busy.current() {
            Some(busy) if busy >= self.stalled_after => Err(StoreError::Unavailable(format!(
                "the store's writer has been inside one commit for {} ms",
                busy.as_millis()
            ))),
            _ => Ok(()),
        }
    }

    /// Commits everything queued so far, except background jobs (they fail with
    /// `StoreError::Closed`, to be done again at the next start), and closes the connection;
    /// later writes fail with `StoreError::Closed`.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.queue.send(Message::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// What the writer has taken from its queue and not yet run.
struct Waiting {
    jobs: Vec<Box<dyn Job>>,
    background: VecDeque<Box<dyn Job>>,
    closer: Option<oneshot::Sender<()>>,
}

impl Waiting {
    fn take(&mut self, message: Message) {
        match message {
            Message::Job(job) if job.background() => self.background.push_back(job),
            Message::Job(job) => self.jobs.push(job),
            Message::Wake => {}
            Message::Close(done) => self.closer = Some(done),
        }
    }
}

fn run(
    mut conn: Connection,
    journal: &dyn Journal,
    mut queue: mpsc::Receiver<Message>,
    commits: &AtomicU64,
    metrics: &CommitMetrics,
    busy: &Busy,
    hold: &HoldState,
) {
    let mut waiting = Waiting {
        jobs: Vec::with_capacity(MAX_JOBS_PER_COMMIT),
        background: VecDeque::new(),
        closer: None,
    };
    while waiting.closer.is_none() {
        // With background work it may run, the writer only looks for jobs; otherwise it
        // waits for one (or for the hold to end).
        if waiting.background.is_empty() || hold.held.load(Ordering::Acquire) {
            match queue.blocking_recv() {
                Some(message) => waiting.take(message),
                None => break,
            }
        }
        while waiting.jobs.len() < MAX_JOBS_PER_COMMIT && waiting.closer.is_none() {
            match queue.try_recv() {
                Ok(message) => waiting.take(message),
                Err(_) => break,
            }
        }
        if !waiting.jobs.is_empty() {
            commit(
                &mut conn,
                journal,
                &mut waiting.jobs,
                commits,
                metrics,
                busy,
            );
        }
        // One background job between groups, none while held, and none once closing.
        if waiting.closer.is_none()
            && !hold.held.load(Ordering::Acquire)
            && let Some(job) = waiting.background.pop_front()
        {
            commit(&mut conn, journal, &mut vec![job], commits, metrics, busy);
            hold.runs.fetch_add(1, Ordering::Release);
        }
    }
    queue.close();
    for job in waiting.background.drain(..) {
        job.finish(Err("the store is closed".into()));
    }
    while let Ok(message) = queue.try_recv() {
        match message {
            Message::Job(job) => job.finish(Err("the store is closed".into())),
            Message::Wake => {}
            Message::Close(done) => {
                let _ = done.send(());
            }
        }
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the store's write connection failed");
    }
    if let Some(done) = waiting.closer {
        let _ = done.send(());
    }
}

/// Commits `jobs` together and answers each.
fn commit(
    conn: &mut Connection,
    journal: &dyn Journal,
    jobs: &mut Vec<Box<dyn Job>>,
    commits: &AtomicU64,
    metrics: &CommitMetrics,
    busy: &Busy,
) {
    let started = Instant::now();
    busy.since.store(busy.elapsed_ms(), Ordering::Release);
    let commit = commit_together(conn, journal, jobs);
    busy.since.store(0, Ordering::Release);
    // Background jobs are not group commits: they would blur what these measure.
    if !jobs.iter().any(|job| job.background()) {
        metrics.committed(jobs.len(), started.elapsed());
    }
    commits.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = &commit {
        tracing::error!(error = %e, jobs = jobs.len(), "store commit failed");
    }
    for job in jobs.drain(..) {
        job.finish(commit.clone());
    }
}

/// Runs `jobs` in one transaction, each inside a savepoint, and commits. The transaction
/// statements are prepared once and reused: at thousands of commits a second, parsing them
/// each time shows.
fn commit_together(
    conn: &mut Connection,
    journal: &dyn Journal,
    jobs: &mut [Box<dyn Job>],
) -> Result<(), String> {
    match run_in_transaction(conn, journal, jobs) {
        Ok(()) => {
            crashpoint::hit(crashpoint::SQLITE_AFTER_COMMIT);
            journal.committed();
            Ok(())
        }
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            journal.rolled_back();
            Err(e.to_string())
        }
    }
}

fn run_in_transaction(
    conn: &Connection,
    journal: &dyn Journal,
    jobs: &mut [Box<dyn Job>],
) -> rusqlite::Result<()> {
    let exec = |sql: &str| -> rusqlite::Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    // One job that needs its commit on disk makes the whole batch synced; a lazy batch's
    // frames are synced by the next synced commit, since the WAL is written in order.
    if jobs.iter().any(|j| j.durability() == Durability::Synced) {
        exec("PRAGMA synchronous = FULL")?;
    } else {
        exec("PRAGMA synchronous = NORMAL")?;
    }
    exec("BEGIN IMMEDIATE")?;
    // A job alone needs no savepoint (which copies each page it first changes): if it fails,
    // the whole transaction goes.
    if let [job] = jobs {
        journal.begin_job();
        if job.run(conn) {
            crashpoint::hit(crashpoint::SQLITE_BEFORE_COMMIT);
            return exec("COMMIT");
        }
        exec("ROLLBACK")?;
        journal.undo_job();
        return Ok(());
    }
    for job in jobs.iter_mut() {
        exec("SAVEPOINT job")?;
        journal.begin_job();
        if !job.run(conn) {
            exec("ROLLBACK TO job")?;
            journal.undo_job();
        }
        exec("RELEASE job")?;
        crashpoint::hit(crashpoint::SQLITE_BETWEEN_JOBS);
    }
    crashpoint::hit(crashpoint::SQLITE_BEFORE_COMMIT);
    exec("COMMIT")
}

/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// WAL pages beyond which the writer checkpoints by itself (SQLite's automatic checkpoint),
/// should the checkpointer fall behind: about 64 MiB.
pub const WRITER_CHECKPOINT_PAGES: i64 = 16_384;
/// WAL pages (about 16 MiB) beyond which background jobs wait until everything in the WAL has
/// been copied back, so that the next write starts the WAL over rather than growing it.
const HOLD_PAGES: i64 = 4_096;
/// The longest background jobs are held at a time: a long read can keep a checkpoint from
/// finishing, and a fan-out must slow down then, not stop.
const MAX_HOLD: Duration = Duration::from_millis(500);
/// The pause between checkpoints while catching up.
const CATCHING_UP: Duration = Duration::from_millis(1);

/// What the checkpointer holds the writer's background jobs with.
struct BackgroundHold {
    state: Arc<HoldState>,
    /// Weak, so the writer thread still ends when its last `Writer` is dropped.
    writer: mpsc::WeakSender<Message>,
}

/// Released however its owner ends, a panicking checkpointer thread included.
impl Drop for BackgroundHold {
    fn drop(&mut self) {
        self.set(false);
    }
}

impl BackgroundHold {
    fn set(&self, held: bool) {
        if self.state.held.swap(held, Ordering::AcqRel) && !held {
            // The writer may be waiting for this rather than for a job.
            if let Some(writer) = self.writer.upgrade() {
                let _ = writer.try_send(Message::Wake);
            }
        }
    }
}

/// Copies the WAL back into the database from a connection of its own, every
/// `CHECKPOINT_INTERVAL`, so that no commit pays for it: left to SQLite, the commit that
/// crosses 1,000 WAL pages runs the checkpoint and its fsync, and a publish waits for it.
/// A passive checkpoint never blocks the writer or the readers. Stopped (and its thread
/// joined) when the store closes or is dropped.
///
/// A large fan-out writes faster than a checkpoint running beside it copies, so the WAL
/// would only grow, until the writer checkpointed by itself (tens of milliseconds that a
/// publish waits for) and every sync had more to flush. Once the WAL holds `HOLD_PAGES` while
/// background jobs wait, the checkpointer holds them and checkpoints until everything is
/// copied back (or `MAX_HOLD` passed), and the WAL starts over at the next write. It holds
/// only while background jobs run, so a busy stream of publishes costs no extra checkpoints.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path`, which must exist.
    fn start(
        path: &Path,
        hold: BackgroundHold,
        interval: Duration,
        hold_pages: i64,
    ) -> StoreResult<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("herald-sqlite-checkpoint".into())
            .spawn(move || {
                // While holding: since when, and what the last checkpoint found.
                let mut held: Option<(Instant, Option<(i64, i64)>)> = None;
                let mut last_runs = 0;
                loop {
                    std::thread::park_timeout(match held {
                        Some(_) => CATCHING_UP,
                        None => interval,
                    });
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    // (busy, pages in the WAL, pages copied back)
                    let pages = conn
                        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                        })
                        .map_err(|e| {
                            tracing::debug!(error = %e, "a checkpoint failed; the next one retries");
                        })
                        .ok();
                    // Background jobs ran since the last look: a fan-out is under way.
                    let runs = hold.state.runs.load(Ordering::Acquire);
                    let active = runs != last_runs;
                    last_runs = runs;
                    let large = pages.is_some_and(|(in_wal, _)| in_wal >= hold_pages);
                    match held {
                        None if large && active => {
                            held = Some((Instant::now(), pages));
                            hold.set(true);
                        }
                        Some((since, last)) => {
                            // Only a write that begins after a complete checkpoint starts
                            // the WAL over. Two complete checkpoints in a row that found the
                            // same WAL mean nothing was committed in between, so the next
                            // write most likely begins after one (a commit already under way
                            // may still extend the WAL; the next hold catches that).
                            let settled = pages
                                .is_some_and(|(in_wal, copied)| copied == in_wal && last == pages);
                            if !large || settled || since.elapsed() >= MAX_HOLD {
                                held = None;
                                hold.set(false);
                            } else {
                                held = Some((since, pages));
                            }
                        }
                        None => {}
                    }
                }
            })
            .expect("spawning the store's checkpoint thread");
        Ok(Checkpointer {
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the thread and waits for it, so its connection is closed on return.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Read-only connections, opened on demand and reused.
#[derive(Clone)]
pub struct Readers {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Connection>>>,
    closed: Arc<AtomicBool>,
}

const MAX_IDLE_READERS: usize = 8;
/// Prepared statements kept per connection: more than the store has distinct queries.
pub const STATEMENT_CACHE: usize = 256;

impl Readers {
    pub fn new(path: &Path) -> Readers {
        Readers {
            path: Arc::new(path.to_path_buf()),
            idle: Arc::default(),
            closed: Arc::default(),
        }
    }

    /// Closes the idle connections; later reads fail with `StoreError::Closed`.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub async fn read<F, T>(&self, work: F) -> StoreResult<T>
    where
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = work(&conn);
            readers.put_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Commit(format!("a read task failed: {e}")))?
    }

    fn take(&self) -> StoreResult<Connection> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        if let Some(conn) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            self.path.as_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    fn put_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_READERS && !self.closed.load(Ordering::SeqCst) {
            idle.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.sqlite3")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER UNIQUE);")
            .unwrap();
        (Writer::start(conn, Arc::new(())), dir)
    }

    /// Starts a job that holds the writer until `release` is sent, and waits until it runs.
    async fn hold_writer(
        writer: &Writer,
    ) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (running, started) = oneshot::channel();
        let writer = writer.clone();
        let job = tokio::spawn(async move {
            writer
                .write(move |_| {
                    running.send(()).unwrap();
                    held.recv().unwrap();
                    Ok(())
                })
                .await
                .unwrap()
        });
        started.await.unwrap();
        (release, job)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_stuck_in_one_commit_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.sqlite3")).unwrap();
        let writer = Writer::start_with_stall_limit(conn, Arc::new(()), Duration::ZERO);
        writer.ping().unwrap();
        let (release, job) = hold_writer(&writer).await;
        let err = writer.ping().unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        release.send(()).unwrap();
        job.await.unwrap();
        writer.ping().expect("ready again once the commit ends");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_busy_for_less_than_the_limit_stays_ready() {
        let (writer, _dir) = writer();
        let (release, job) = hold_writer(&writer).await;
        writer.ping().expect("a commit under way is not a stall");
        release.send(()).unwrap();
        job.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_commits() {
        let (writer, _dir) = writer();
        let tasks: Vec<_> = (0..500)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .write(move |c| Ok(c.execute("INSERT INTO t (v) VALUES (?1)", [i])?))
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), 1);
        }
        let count: i64 = writer
            .write(|c| Ok(c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(count, 500);
        assert!(
            writer.commits() < 250,
            "500 concurrent writes took {} commits",
            writer.commits()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_jobs_wait_for_queued_groups_and_commit_alone() {
        let (writer, _dir) = writer();
        // Holds the writer until everything below is queued.
        let (release, blocker) = hold(&writer).await;
        let insert =
            |v: i64| move |c: &Connection| Ok(c.execute("INSERT INTO t (v) VALUES (?1)", [v])?);
        let mut queued = Vec::new();
        for (v, background) in [(1, true), (2, true), (3, false), (4, false)] {
            let submitter = writer.clone();
            queued.push(tokio::spawn(async move {
                if background {
                    submitter.write_in_background(insert(v)).await
                } else {
                    submitter.write(insert(v)).await
                }
            }));
            while writer.queue.capacity() > QUEUE_DEPTH - queued.len() {
                tokio::task::yield_now().await;
            }
        }
        let before = writer.commits();
        release.send(()).unwrap();
        blocker.await.unwrap();
        for job in queued {
            job.await.unwrap().unwrap();
        }
        let order: Vec<i64> = writer
            .write(|c| {
                let mut stmt = c.prepare("SELECT v FROM t ORDER BY rowid")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(order, vec![3, 4, 1, 2], "queued publishes go first");
        // The blocker's group, 3 and 4 together, then 1 and 2 alone (and the read).
        assert_eq!(writer.commits() - before, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_background_jobs_wait_while_others_run_and_resume_when_released() {
        let (writer, _dir) = writer();
        let hold = BackgroundHold {
            state: writer.hold.clone(),
            writer: writer.queue.downgrade(),
        };
        hold.set(true);
        let mut background = Box::pin(
            writer.write_in_background(|c| Ok(c.execute("INSERT INTO t (v) VALUES (1)", [])?)),
        );
        // Polled once, it is queued (the queue has room) ahead of the publish.
        std::future::poll_fn(|cx| {
            assert!(background.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        // A publish still goes through while the background job waits.
        writer
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES (2)", [])?))
            .await
            .unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut background).await;
        assert!(waited.is_err(), "a held background job must wait");
        // Released, the writer (idle, waiting for a job) is woken and runs it.
        hold.set(false);
        tokio::time::timeout(Duration::from_secs(10), background)
            .await
            .expect("a released hold wakes the writer")
            .unwrap();
        let count: i64 = writer
            .write(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(count, 2);
    }

    /// Background jobs written back to back, as a large fan-out's chunks are, leave the WAL no
    /// moment to start over: without the hold it grows until SQLite's own checkpoint (64 MiB),
    /// which the writer then runs itself, ahead of the publishes waiting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn back_to_back_background_jobs_keep_the_wal_small() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sqlite3");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 16384; \
             CREATE TABLE blobs (b BLOB);",
        )
        .unwrap();
        let writer = Writer::start(conn, Arc::new(()));
        // Scaled down: a WAL of 1 MiB is large, checked every 2 ms.
        let hold_pages = 256;
        let checkpointer = writer
            .start_checkpointer_paced(&path, Duration::from_millis(2), hold_pages)
            .unwrap();
        let wal = dir.path().join("w.sqlite3-wal");
        // 32 MiB in jobs of 64 KiB, from four submitters, so one is always queued.
        let mut submitters = Vec::new();
        for _ in 0..4 {
            let writer = writer.clone();
            submitters.push(tokio::spawn(async move {
                for _ in 0..128 {
                    writer
                        .write_in_background(|c| {
                            c.execute("INSERT INTO blobs (b) VALUES (zeroblob(65536))", [])?;
                            Ok(())
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for submitter in submitters {
            submitter.await.unwrap();
        }
        checkpointer.stop();
        // The file never shrinks (no `journal_size_limit`): its size is the largest the WAL
        // grew to. Without the hold that is about 38 MiB; the bound leaves room for a
        // checkpointer that a busy machine schedules late.
        let largest = std::fs::metadata(&wal).unwrap().len();
        let bound = 24 << 20;
        assert!(
            largest < bound,
            "the WAL grew to {largest} bytes (at most {bound} expected)"
        );
    }

    /// Records the calls a journal gets.
    #[derive(Default)]
    struct Calls(Mutex<Vec<&'static str>>);

    impl Journal for Calls {
        fn begin_job(&self) {
            self.0.lock().unwrap().push("begin");
        }
        fn undo_job(&self) {
            self.0.lock().unwrap().push("undo");
        }
        fn committed(&self) {
            self.0.lock().unwrap().push("committed");
        }
        fn rolled_back(&self) {
            self.0.lock().unwrap().push("rolled back");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_journal_follows_jobs_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("j.sqlite3")).unwrap();
        // A deferred foreign key fails the COMMIT itself, after every job succeeded.
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED); \
             CREATE TABLE t (v INTEGER UNIQUE);",
        )
        .unwrap();
        let calls = Arc::new(Calls::default());
        let writer = Writer::start(conn, calls.clone());
        let take = || std::mem::take(&mut *calls.0.lock().unwrap());

        writer
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES (1)", [])?))
            .await
            .unwrap();
        assert_eq!(take(), ["begin", "committed"]);
        let failed = writer
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES (1)", [])?))
            .await;
        assert!(failed.is_err());
        assert_eq!(take(), ["begin", "undo", "committed"]);
        let failed = writer
            .write(|c| Ok(c.execute("INSERT INTO child (parent) VALUES (7)", [])?))
            .await;
        assert!(failed.is_err());
        assert_eq!(take(), ["begin", "rolled back"]);
    }

    /// Holds the writer thread inside a job until the returned sender is used (or dropped).
    async fn hold(writer: &Writer) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (running, started) = oneshot::channel::<()>();
        let writer = writer.clone();
        let task = tokio::spawn(async move {
            writer
                .write(move |_| {
                    running.send(()).unwrap();
                    let _ = held.recv();
                    Ok(())
                })
                .await
                .unwrap();
        });
        started.await.unwrap();
        (release, task)
    }

    /// Three writes in one group: the one that fails rolls back to its savepoint, alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_rolls_back_alone() {
        let (writer, _dir) = writer();
        writer
            .write(|c| Ok(c.execute("INSERT INTO t (v) VALUES (1)", [])?))
            .await
            .unwrap();
        let (release, held) = hold(&writer).await;
        let mut jobs = Vec::new();
        for v in [2, 3, 4] {
            let submitter = writer.clone();
            jobs.push(tokio::spawn(async move {
                submitter
                    .write(move |c| {
                        c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                        // The second inserts 3, then fails on the duplicate 1: both of its
                        // rows must vanish.
                        if v == 3 {
                            c.execute("INSERT INTO t (v) VALUES (1)", [])?;
                        }
                        Ok(())
                    })
                    .await
            }));
            while writer.queue.capacity() > QUEUE_DEPTH - jobs.len() {
                tokio::task::yield_now().await;
            }
        }
        let before = writer.commits();
        release.send(()).unwrap();
        held.await.unwrap();
        let outcomes: Vec<bool> = futures_ok(jobs).await;
        assert_eq!(outcomes, [true, false, true]);
        assert_eq!(
            writer.commits() - before,
            2,
            "the held job, then the three together"
        );
        let values: Vec<i64> = writer
            .write(|c| {
                let mut stmt = c.prepare("SELECT v FROM t ORDER BY v")?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(values, vec![1, 2, 4]);
    }

    async fn futures_ok(jobs: Vec<tokio::task::JoinHandle<StoreResult<()>>>) -> Vec<bool> {
        let mut outcomes = Vec::new();
        for job in jobs {
            outcomes.push(job.await.unwrap().is_ok());
        }
        outcomes
    }
}
