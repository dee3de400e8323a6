//! Crash points: named places in the write path where the crash-injection test makes the
//! process die abruptly, as `kill -9` would, to show that nothing acknowledged is lost there.
//!
//! `HERALD_CRASH_POINT=<name>:<n>` arms one point when the process starts: its `n`-th hit
//! aborts the process (no destructor, no flush, no graceful shutdown). Only debug builds have
//! crash points; in a release build [`hit`] is empty and the variable is ignored.

/// Every crash point, for the test that picks one at random.
pub const POINTS: &[&str] = &[
    SQLITE_BETWEEN_JOBS,
    SQLITE_BEFORE_COMMIT,
    SQLITE_AFTER_COMMIT,
    RECORDER_BEFORE_RECORD,
    RECORDER_AFTER_RECORD,
    POSTGRES_PUBLISH_BEFORE_COMMIT,
    POSTGRES_PUBLISH_AFTER_COMMIT,
    POSTGRES_RECORD_BEFORE_COMMIT,
    POSTGRES_RECORD_AFTER_COMMIT,
];

/// The SQLite writer, in a group of several jobs, after each job's savepoint is released
/// (before the next job, or the `COMMIT` after the last).
pub const SQLITE_BETWEEN_JOBS: &str = "sqlite.between_jobs";
/// The SQLite writer, every job of a group run, before `COMMIT`.
pub const SQLITE_BEFORE_COMMIT: &str = "sqlite.before_commit";
/// The SQLite writer, after `COMMIT` and before any caller is answered.
pub const SQLITE_AFTER_COMMIT: &str = "sqlite.after_commit";
/// The recorder, with a batch of attempt outcomes about to be stored.
pub const RECORDER_BEFORE_RECORD: &str = "recorder.before_record";
/// The recorder, a batch stored and its effects not yet passed on.
pub const RECORDER_AFTER_RECORD: &str = "recorder.after_record";
/// PostgreSQL publish, its rows written, before `COMMIT`.
pub const POSTGRES_PUBLISH_BEFORE_COMMIT: &str = "postgres.publish.before_commit";
/// PostgreSQL publish, committed, before the publisher is answered.
pub const POSTGRES_PUBLISH_AFTER_COMMIT: &str = "postgres.publish.after_commit";
/// PostgreSQL record of attempt outcomes, written, before `COMMIT`.
pub const POSTGRES_RECORD_BEFORE_COMMIT: &str = "postgres.record.before_commit";
/// PostgreSQL record of attempt outcomes, committed, before the recorder hears of it.
pub const POSTGRES_RECORD_AFTER_COMMIT: &str = "postgres.record.after_commit";

/// The environment variable that arms a point.
pub const ENV: &str = "HERALD_CRASH_POINT";

/// Passes the crash point `name`: aborts the process if it is the armed one and this is its
/// chosen hit.
#[inline]
pub fn hit(name: &'static str) {
    #[cfg(debug_assertions)]
    armed::hit(name);
    #[cfg(not(debug_assertions))]
    let _ = name;
}

#[cfg(debug_assertions)]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Armed {
        name: String,
        at: u64,
        hits: AtomicU64,
    }

    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

    fn armed() -> Option<&'static Armed> {
        ARMED
            .get_or_init(|| {
                let value = std::env::var(super::ENV).ok()?;
                let parsed = value.rsplit_once(':').and_then(|(name, at)| {
                    let at = at.parse().ok().filter(|at| *at > 0)?;
                    super::POINTS.contains(&name).then(|| Armed {
                        name: name.to_string(),
                        at,
                        hits: AtomicU64::new(0),
                    })
                });
                // A typo must not pass for a run in which the point was never reached.
                if parsed.is_none() {
                    eprintln!(
                        "{}={value}: expected <point>:<hit>, hit from 1, with a point among {:?}",
                        super::ENV,
                        super::POINTS
                    );
                    std::process::exit(2);
                }
                parsed
            })
            .as_ref()
    }

    pub fn hit(name: &'static str) {
        let Some(armed) = armed() else { return };
        if armed.name == name && armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.at {
            eprintln!("crash point {name} hit {} times: aborting", armed.at);
            std::process::abort();
        }
    }
}
