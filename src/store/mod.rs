//! The store: one interface over Herald's durable state, so the embedded SQLite store
//! (`sqlite`, one process) and the shared PostgreSQL store (`postgres`, several nodes) stand
//! in for each other; `tests/it/store.rs` holds both to the same behaviour. Every method takes the tenant where a row
//! belongs to one, and implementations scope their queries by it.
//!
//! The delivery queue lives here too: `publish` writes an event and its pending deliveries in
//! one commit (a fan-out larger than [`MAX_INLINE_DELIVERIES`] commits a pending fan-out
//! instead, whose deliveries `fan_out` then creates in chunks); `claim` leases due deliveries (no transaction outlives the call, so nothing is
//! held across network I/O); `record` stores an attempt and the delivery's next state. A lease
//! that expires makes its delivery due again, which is what makes delivery at-least-once.
//!
//! What is not SQL is decided once for both stores: which streams an event goes to, and
//! what a publish writes (`fanout`), and what an attempt's outcome does to its delivery, its
//! stream's statistics and health, and which notices follow (`outcomes`). The stores only
//! store and load around those rules.

pub mod columns;
pub mod fanout;
pub mod keys;
pub mod outcomes;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;

use crate::catalog::EventType;
use crate::clock::Millis;
use crate::event::Event;
use crate::secret::StreamSecret;
use crate::stream::{Stream, StreamStatus};

/// Upper bounds (ms) of the latency buckets kept in the statistics rollups.
pub const LATENCY_BOUNDS_MS: [i64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000,
];

/// The tables whose rows belong to a tenant, in the order deleting a tenant empties them
/// (the `tenants` row itself goes last).
pub(crate) const TENANT_TABLES: [&str; 11] = [
    // First: a chunk of a pending fan-out could otherwise create deliveries after they
    // were deleted (on PostgreSQL it holds the row; deleting it waits for the chunk).
    "fanouts",
    "console_links",
    "console_sessions",
    "event_types",
    "stream_stats",
    "attempts",
    "deliveries",
    "events",
    // Streams before their secrets, as a stream's deletion and a secret's rotation lock
    // them on PostgreSQL.
    "streams",
    "stream_secrets",
    "api_tokens",
];

/// The tables `Store::close_tenant` empties of a tenant's rows at once: what sends for it
/// (streams, their secrets, pending fan-outs) and what acts for it (tokens, console
/// sessions, sign-in links). Pending fan-outs first, as in [`TENANT_TABLES`].
pub(crate) const CLOSED_WITH_TENANT: [&str; 6] = [
    "fanouts",
    "console_links",
    "console_sessions",
    "api_tokens",
    "streams",
    "stream_secrets",
];

/// The latency bucket of a duration: the first bound it does not exceed.
pub fn latency_bucket(duration_ms: i64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&bound| duration_ms <= bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Postgres(String),
    /// The database cannot be reached right now; the same call may succeed later.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    #[error("could not open the store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error(transparent)]
    Cipher(#[from] crate::secret::CipherError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the commit failed: {0}")]
    Commit(String),
    #[error("the store is shutting down")]
    Closed,
    /// Another stream of the tenant has the name a stream was to be created with or given:
    /// names are unique per tenant (its id).
    #[error("a stream named like this exists: {0}")]
    NameTaken(String),
}

/// The isolation unit: every other row belongs to exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub created_at: Millis,
}

/// An API token as stored: the secret itself is only ever held as a SHA-256 hash.
#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    /// `None` for a platform token, which acts on every tenant.
    pub tenant_id: Option<String>,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: Millis,
}

pub type TokenHash = [u8; 32];

pub fn hash_token(secret: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest
        .as_ref()
        .try_into()
        .expect("a SHA-256 digest is 32 bytes")
}

/// A web console session as stored: found by the hash of its id (the browser's cookie holds
/// the id, the store never does), serving only while the token it was opened with is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub hash: TokenHash,
    /// The hash of the API token the session was opened with.
    pub token_hash: TokenHash,
    /// The token's tenant, `None` for a platform token; a sign-in link's tenant.
    pub tenant_id: Option<String>,
    /// The scopes a sign-in link granted; `None` for a session opened with a token, which
    /// has the token's.
    pub scopes: Option<Vec<String>>,
    /// What a session opened by a sign-in link is shown as.
    pub name: Option<String>,
    pub created_at: Millis,
    /// When it ends unless used again before: the earlier of its idle and absolute ends.
    pub expires_at: Millis,
}

/// A sign-in link to a tenant's console as stored: found by the hash of its secret (the URL
/// holds the secret, the store never does), serving once, before `expires_at`, while the
/// token that issued it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLink {
    pub hash: TokenHash,
    /// The hash of the platform token that issued it.
    pub token_hash: TokenHash,
    pub tenant_id: String,
    pub scopes: Vec<String>,
    pub name: Option<String>,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// The outcome of publishing one event.
#[derive(Debug, Clone)]
pub struct Published {
    pub id: String,
    pub source: String,
    /// An event with the same (`source`, `id`) was accepted before; nothing new was stored.
    pub duplicate: bool,
    /// Ids of the streams that got a pending delivery.
    pub streams: Vec<String>,
    /// The new deliveries to enabled streams, already leased when the publish asked for it:
    /// the dispatcher can start them without claiming them first.
    pub leased: Vec<Claimed>,
    /// The deliveries to `streams` are not created yet: the publish's fan-out was too large
    /// for its own commit and is pending, for `Store::fan_out` to create.
    pub deferred: bool,
}

/// The most deliveries one publish creates in its own commit. Beyond it, the publish commits
/// its events with a pending fan-out (the events and the streams they go to, as subscribed at
/// that moment), and `Store::fan_out` creates the deliveries in chunks of about this size, so
/// one tenant's large fan-out never holds the shared write path for long.
pub const MAX_INLINE_DELIVERIES: usize = 1_000;

/// One chunk of a pending fan-out, created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FannedOut {
    /// The fan-out the chunk belonged to: the next call passes it as `after`.
    pub fanout: i64,
    /// The streams that got new deliveries.
    pub streams: Vec<String>,
}

/// Lease up to `limit` due deliveries of one stream.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub tenant_id: String,
    pub stream_id: String,
    pub limit: usize,
}

/// A leased delivery, with its event.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Store-internal handle, passed back to `record`.
    pub key: i64,
    /// The lease's token: an outcome or a release counts only under the lease it names (on
    /// the shared store another node may have taken a lapsed one over; on the embedded store
    /// a row id freed by a deletion may have gone to another delivery).
    pub lease: i64,
    /// When the lease lapses and the delivery becomes due again (on a shared store, for
    /// another node to claim).
    pub lease_until: Millis,
    pub id: String,
    pub tenant_id: String,
    pub stream_id: String,
    /// Attempts made before this one.
    pub attempts: u32,
    pub event: std::sync::Arc<Event>,
}

#[derive(Debug, Clone, Default)]
pub struct ClaimBatch {
    pub tenant_id: String,
    pub stream_id: String,
    pub deliveries: Vec<Claimed>,
    /// When this stream's next pending delivery falls due (leased ones count at their lease
    /// expiry); `None` when it has nothing pending.
    pub next_due: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            "cancelled" => Some(DeliveryStatus::Cancelled),
            _ => None,
        }
    }
}

/// One finished attempt and what follows from it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub key: i64,
    pub lease: i64,
    pub tenant_id: String,
    pub stream_id: String,
    pub delivery_id: String,
    pub event_id: String,
    pub event_type: String,
    /// This attempt's number in the current round (1 for the first).
    pub attempt_number: u32,
    pub attempted_at: Millis,
    pub duration_ms: i64,
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
    pub error_kind: Option<&'static str>,
    pub error_message: Option<String>,
    /// What only the destination kind knows about this attempt, as a JSON object.
    pub detail: Option<String>,
    /// The delivery's state after this attempt: `Pending` with `next_attempt_at` to retry.
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<Millis>,
    /// The destination refused the delivery for good (rather than retries running out).
    pub refused: bool,
    /// Set when the destination asked to stop (a webhook's `410 Gone`): the stream is
    /// disabled with this reason.
    pub disable_stream: Option<String>,
    /// The stream's limit of failed attempts in a row (0: none).
    pub max_consecutive_failures: u32,
    /// How long the stream must have failed without a success to be disabled (0: the count
    /// alone decides).
    pub disable_after_failing_seconds: u64,
}

/// What recording attempts changed beyond the deliveries themselves.
#[derive(Debug, Clone, Default)]
pub struct RecordEffects {
    /// Streams disabled by these attempts (a `410 Gone`, too many failures in a row).
    pub disabled_streams: Vec<String>,
    /// Streams that got new deliveries of Herald's own notices.
    pub woken_streams: Vec<String>,
    /// A notice's fan-out was too large for the commit and is pending.
    pub fan_out_pending: bool,
}

/// Which deliveries of a stream to list or redeliver; every given filter must hold.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub statuses: Vec<DeliveryStatus>,
    pub event_types: Vec<String>,
    /// Created at or after.
    pub date_from: Option<Millis>,
    /// Created before.
    pub date_to: Option<Millis>,
}

/// One page of a listing, newest first; `next` continues it.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<i64>,
}

impl<T> Page<T> {
    /// Reads a page from `(seq, item)` rows ordered newest first, of a query that asked for
    /// `take + 1` rows: an extra row means there is a next page, which starts after the last
    /// one kept.
    pub fn from_newest(
        rows: impl IntoIterator<Item = StoreResult<(i64, T)>>,
        take: usize,
    ) -> StoreResult<Page<T>> {
        let mut items = Vec::with_capacity(take);
        let mut last_seq = None;
        for row in rows {
            if items.len() == take {
                return Ok(Page {
                    items,
                    next: last_seq,
                });
            }
            let (seq, item) = row?;
            last_seq = Some(seq);
            items.push(item);
        }
        Ok(Page { items, next: None })
    }
}

/// A stream's undelivered work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub pending: u64,
    pub oldest_created_at: Option<Millis>,
}

/// Counts the pending deliveries of each enabled stream, with the earliest due time: what
/// `Store::backlogs` runs on either store, given where its pending deliveries are (`pending`:
/// `deliveries WHERE status = 'pending'`, or PostgreSQL's `queue`). Grouping first walks the
/// index of pending deliveries once, without a lookup of the stream per delivery.
pub(crate) fn backlogs_sql(pending: &str) -> String {
    format!(
        "SELECT b.tenant_id, b.stream_id, b.pending, b.next_due_at \
         FROM (SELECT tenant_id, stream_id, COUNT(*) AS pending, MIN(due_at) AS next_due_at \
               FROM {pending} GROUP BY tenant_id, stream_id) b \
         JOIN streams s ON s.tenant_id = b.tenant_id AND s.id = b.stream_id \
         WHERE s.status = 'enabled'"
    )
}

/// Why a store refuses a schema newer than the binary knows: a newer Herald upgraded it, and
/// its rows may mean what this version cannot know.
pub(crate) fn schema_too_new(found: usize, known: usize) -> String {
    format!(
        "the store's schema is at version {found}, newer than this Herald knows (version \
         {known}): run the Herald version that upgraded it"
    )
}

/// What a list of a tenant's streams shows of each: its backlog, and its finished deliveries
/// per hour (summed over event types). One call per list, not one per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamActivity {
    /// Pending deliveries of each stream that has some, keyed by stream id.
    pub backlogs: std::collections::HashMap<String, Backlog>,
    /// Per stream with outcomes in the range, its hours in order.
    pub hours: std::collections::HashMap<String, Vec<HourOutcomes>>,
}

/// One hour of one stream's finished deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourOutcomes {
    pub hour: Millis,
    pub succeeded: u64,
    pub failed: u64,
}

/// The outcomes per hour of each of a tenant's streams (`$1`) from `$2` to `$3`, on either
/// store. Walking the streams first reads each one's rollups by their key (tenant, stream,
/// hour), so older hours are never scanned (`CROSS JOIN` keeps SQLite, which has no
/// statistics to plan with, to that order); rollups of deleted streams are left out.
pub(crate) const TENANT_HOURS: &str = "SELECT st.stream_id, st.hour, \
     CAST(SUM(st.succeeded) AS BIGINT), CAST(SUM(st.failed) AS BIGINT) \
     FROM streams s CROSS JOIN stream_stats st \
     WHERE s.tenant_id = $1 AND st.tenant_id = s.tenant_id AND st.stream_id = s.id \
     AND st.hour >= $2 AND st.hour < $3 \
     GROUP BY st.stream_id, st.hour ORDER BY st.stream_id, st.hour";

/// The pending deliveries of one enabled stream, for the metrics endpoint.
#[derive(Debug, Clone)]
pub struct StreamBacklog {
    pub tenant_id: String,
    pub stream_id: String,
    pub pending: u64,
    /// The earliest `due_at` among them.
    pub next_due_at: Option<Millis>,
}

/// A delivery as the API shows it. Listings leave `attempts` empty; the counters and the
/// last attempt's summary are always set.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub id: String,
    pub stream_id: String,
    pub event_id: String,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempt_count: u32,
    pub last_attempt_at: Option<Millis>,
    pub last_response_status: Option<u16>,
    pub last_error_kind: Option<String>,
    pub attempts: Vec<AttemptView>,
    pub next_attempt_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone)]
pub struct AttemptView {
    pub attempted_at: Millis,
    pub duration_ms: i64,
    pub response_status: Option<u16>,
    pub response_body: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    /// The destination kind's own record of the attempt, as JSON text.
    pub detail: Option<String>,
}

/// One hour of one stream's outcomes for one event type (see `LATENCY_BOUNDS_MS`).
#[derive(Debug, Clone, Default)]
pub struct StatsRow {
    pub hour: Millis,
    pub event_type: String,
    pub succeeded: u64,
    pub failed: u64,
    pub attempts: u64,
    pub failed_attempts: u64,
    /// Attempts per latency bucket: `LATENCY_BOUNDS_MS.len() + 1` counts.
    pub latency: Vec<u64>,
}

/// Which events of the audit log to list; every given filter must hold.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    pub subject: Option<String>,
    pub projectid: Option<String>,
    pub userid: Option<String>,
    /// Received at or after.
    pub date_from: Option<Millis>,
    /// Received before.
    pub date_to: Option<Millis>,
}

/// An event as the audit log holds it.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub event: Event,
    pub received_at: Millis,
    /// Set once the payload was erased; the metadata stays.
    pub erased_at: Option<Millis>,
}

/// A place in a tenant's event log, as readers of the log see it: after the events of the
/// transactions numbered below `xid`, and after event `seq` of transaction `xid`. The embedded
/// store commits one writer's transactions in the order of their `seq`, so its `xid` is
/// always 0; on PostgreSQL, transactions commit in another order than the one in which they
/// took their `seq`s, and the log is ordered by transaction id first (see
/// `postgres::log::read_log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct LogPosition {
    pub xid: i64,
    pub seq: i64,
}

impl LogPosition {
    /// The offset clients see: opaque to them, parsed back by `parse`.
    pub fn encode(self) -> String {
        format!("{}-{}", self.xid, self.seq)
    }

    pub fn parse(offset: &str) -> Option<LogPosition> {
        let (xid, seq) = offset.split_once('-')?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(xid) || !digits(seq) {
            return None;
        }
        Some(LogPosition {
            xid: xid.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// Where a reader of the event log starts.
#[derive(Debug, Clone, Copy)]
pub enum LogStart {
    /// After an event it has seen (its offset). With `received_since`, an event received
    /// before it counts as gone: retention may have removed what followed it.
    After {
        position: LogPosition,
        received_since: Option<Millis>,
    },
    /// At the first event received at or after this time.
    ReceivedFrom(Millis),
    /// After the last event visible now: only what comes next.
    End,
}

/// Which events' payloads to erase.
#[derive(Debug, Clone)]
pub enum Erase {
    Events(Vec<String>),
    Subject(String),
}

/// What erasing an event does to its row, the same in both stores: everything that can carry
/// personal data goes (`data`, which also stands for `data_base64`; `subject`; every
/// extension attribute, `userid` and `projectid` with the columns that repeat them;
/// `datacontenttype` and `dataschema`, which describe a payload no longer there). What stays
/// is what CloudEvents requires (`id`, `source`, `type`) and `time`. The response bodies of
/// the attempts to deliver it go too (a receiver may echo what it got): see `Store::erase`.
pub(crate) const ERASED_EVENT: &str = "data = 'null', subject = NULL, datacontenttype = NULL, \
     dataschema = NULL, extensions = NULL, projectid = NULL, userid = NULL";

/// What one retention sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub events: u64,
    pub bodies: u64,
}

/// Retention never removes the store's newest event (`e`): the embedded store's `seq` is a
/// row id, which SQLite hands out again once the highest one is gone, and the event log's
/// offsets must never repeat. The same rule in both stores, so they keep the same events.
pub const NOT_NEWEST: &str = "e.seq < (SELECT MAX(seq) FROM events)";

/// The retention rule, the same SQL in both stores: an old event (`e`) is kept while one of
/// its deliveries is pending to a stream that still exists, or while its fan-out is. A
/// delivery pending to a deleted stream would never finish (a publish that raced the stream's
/// deletion can leave one, and so can a redelivery to a stream that is gone), so it keeps
/// nothing.
pub(crate) const KEPT_BY_PENDING_WORK: &str = "(EXISTS (SELECT 1 FROM deliveries d \
     JOIN streams s ON s.tenant_id = d.tenant_id AND s.id = d.stream_id \
     WHERE d.tenant_id = e.tenant_id AND d.event_seq = e.seq AND d.status = 'pending') \
     OR EXISTS (SELECT 1 FROM fanouts f WHERE f.tenant_id = e.tenant_id \
     AND e.seq BETWEEN f.first_seq AND f.last_seq))";

/// What touching a listen session's stream found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// The holder still holds it; its expiry moved.
    Held,
    /// Another connection holds it now.
    Taken,
    /// It no longer exists.
    Gone,
}

/// A change to a stream's definition and what comes with it, committed together.
#[derive(Debug, Clone)]
pub struct StreamUpdate {
    pub stream: Stream,
    /// Cancel the stream's pending deliveries (re-enabling with the backlog skipped).
    pub skip_backlog: bool,
    /// Herald's own events about the change (`herald.stream.enabled`, ...).
    pub notices: Vec<Event>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Finishes the writes under way and closes the store (at shutdown).
    async fn close(&self);
    /// Checks that the store can serve requests now (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    // Tenants and tokens.
    /// Inserts the tenant; false if its id is taken.
    async fn create_tenant(&self, tenant: Tenant) -> StoreResult<bool>;
    async fn get_tenant(&self, id: &str) -> StoreResult<Option<Tenant>>;
    async fn list_tenants(&self) -> StoreResult<Vec<Tenant>>;
    async fn rename_tenant(&self, id: &str, name: &str) -> StoreResult<Option<Tenant>>;
    /// The first step of deleting a tenant, done at once: what sends for the tenant or acts
    /// for it (its streams, pending fan-outs, tokens, console sessions and sign-in links) is
    /// deleted, so that nothing more is sent or accepted for it while `delete_tenant` removes
    /// the bulk of its rows. The tenant itself stays; false if it does not exist.
    async fn close_tenant(&self, id: &str) -> StoreResult<bool>;
    /// Deletes the tenant and every row it owns (closing it first); false if it does not
    /// exist.
    async fn delete_tenant(&self, id: &str) -> StoreResult<bool>;
    async fn count_tokens(&self) -> StoreResult<u64>;
    /// Inserts the token, or gives the token with the same id this new secret. The same
    /// secret again leaves a revoked token revoked.
    async fn put_token(&self, token: Token, hash: TokenHash) -> StoreResult<()>;
    /// A valid (not revoked) token by the hash of its secret.
    async fn find_token(&self, hash: TokenHash) -> StoreResult<Option<Token>>;
    /// Valid tokens of a tenant, or the platform tokens for `None`.
    async fn list_tokens(&self, tenant_id: Option<&str>) -> StoreResult<Vec<Token>>;
    /// Revokes a token of a tenant (or a platform token for `None`); false if none matched.
    async fn revoke_token(
        &self,
        tenant_id: Option<&str>,
        id: &str,
        now: Millis,
    ) -> StoreResult<bool>;

    // Web console sessions.
    /// Stores a new session.
    async fn create_console_session(&self, session: ConsoleSession) -> StoreResult<()>;
    /// The session with this id hash and the token it was opened with, while that token is
    /// valid (not revoked, not replaced by another secret) and the session's tenant exists
    /// and is older than the session (a session that outlived its tenant's deletion never
    /// reaches a tenant made again under that id); expired or not.
    async fn find_console_session(
        &self,
        hash: TokenHash,
    ) -> StoreResult<Option<(ConsoleSession, Token)>>;
    /// Moves the session's end; false if it no longer exists.
    async fn touch_console_session(&self, hash: TokenHash, expires_at: Millis)
    -> StoreResult<bool>;
    /// Deletes the session; false if it did not exist.
    async fn delete_console_session(&self, hash: TokenHash) -> StoreResult<bool>;
    /// Deletes every session, and every sign-in link, that ended at or before `now`;
    /// answers how many.
    async fn delete_expired_console_sessions(&self, now: Millis) -> StoreResult<u64>;
    /// Stores a new sign-in link.
    async fn create_console_link(&self, link: ConsoleLink) -> StoreResult<()>;
    /// The sign-in link with this secret hash, if it has not been opened and has not ended
    /// at `now`; it stays.
    async fn find_console_link(
        &self,
        hash: TokenHash,
        now: Millis,
    ) -> StoreResult<Option<ConsoleLink>>;
    /// Takes the sign-in link with this secret hash, in one statement: of any number of
    /// calls for one link, on any nodes, at most one gets it, and only before it ends.
    async fn consume_console_link(
        &self,
        hash: TokenHash,
        now: Millis,
    ) -> StoreResult<Option<ConsoleLink>>;

    /// Deletes every unused sign-in link to `tenant_id`, then every console session a link
    /// opened there; answers how many of each.
    async fn withdraw_console_links(&self, tenant_id: &str) -> StoreResult<(u64, u64)>;

    // A tenant's own event types.
    /// Inserts the type; false if the tenant has one of that name.
    async fn create_event_type(
        &self,
        tenant_id: &str,
        event_type: EventType,
        now: Millis,
    ) -> StoreResult<bool>;
    async fn list_event_types(&self, tenant_id: &str) -> StoreResult<Vec<EventType>>;
    async fn delete_event_type(&self, tenant_id: &str, name: &str) -> StoreResult<bool>;

    // Streams.
    /// Inserts the stream, with its first stream secret when its destination keeps one.
    async fn create_stream(&self, stream: Stream, secret: Option<StreamSecret>) -> StoreResult<()>;
    async fn get_stream(&self, tenant_id: &str, id: &str) -> StoreResult<Option<Stream>>;
    async fn list_streams(&self, tenant_id: &str) -> StoreResult<Vec<Stream>>;
    /// Replaces the stream's definition; `None` if it does not exist, else the notices as
    /// published.
    async fn update_stream(&self, update: StreamUpdate) -> StoreResult<Option<Vec<Published>>>;
    /// Deletes the stream and cancels its pending deliveries; false if it does not exist.
    async fn delete_stream(&self, tenant_id: &str, id: &str, now: Millis) -> StoreResult<bool>;
    /// Makes `holder` (one `herald listen` connection) the holder of a listen session's
    /// stream, and moves its expiry to `expires_at`; false if no session has that id. Not a
    /// change of the stream's definition: nobody is told.
    async fn hold_stream(
        &self,
        tenant_id: &str,
        id: &str,
        holder: &str,
        expires_at: Millis,
    ) -> StoreResult<bool>;
    /// Moves the session's expiry while `holder` still holds it.
    async fn touch_stream(
        &self,
        tenant_id: &str,
        id: &str,
        holder: &str,
        expires_at: Millis,
    ) -> StoreResult<Holding>;
    /// Deletes the sessions whose expiry is at or before `now`, as `delete_stream` does, and
    /// answers their (tenant, stream) ids.
    async fn delete_expired_streams(&self, now: Millis) -> StoreResult<Vec<(String, String)>>;
    /// The stream's secrets still valid at `now`, newest first (what they are for is the
    /// destination kind's business).
    async fn stream_secrets(
        &self,
        tenant_id: &str,
        stream_id: &str,
        now: Millis,
    ) -> StoreResult<Vec<StreamSecret>>;
    /// The secrets a stream's destination client is built with: its stream secrets valid at
    /// `now` when its kind keeps some, else none (and no read).
    async fn secrets_for(&self, stream: &Stream, now: Millis) -> StoreResult<Vec<StreamSecret>> {
        if stream.destination.uses_stream_secret() {
            self.stream_secrets(&stream.tenant_id, &stream.id, now)
                .await
        } else {
            Ok(Vec::new())
        }
    }
    /// Makes `secret` current; the current ones expire at `old_expires_at`.
    async fn rotate_secret(
        &self,
        tenant_id: &str,
        stream_id: &str,
        secret: StreamSecret,
        old_expires_at: Millis,
    ) -> StoreResult<bool>;
    /// Every stream of every tenant in `status`, for the dispatcher.
    async fn streams_with_status(&self, status: StreamStatus) -> StoreResult<Vec<Stream>>;

    // Events and the delivery queue.
    /// Stores the events and one pending delivery per matching enabled stream, durably, in one
    /// commit shared with concurrent callers. Duplicates of accepted events are skipped. With
    /// `lease_until`, the deliveries to enabled streams come back leased until then. Beyond
    /// [`MAX_INLINE_DELIVERIES`], the deliveries are left to `fan_out` (`Published::deferred`),
    /// durably promised by the same commit.
    async fn publish(
        &self,
        tenant_id: &str,
        events: Vec<Event>,
        now: Millis,
        lease_until: Option<Millis>,
    ) -> StoreResult<Vec<Published>>;
    /// Creates the next chunk (about `limit` deliveries) of a pending fan-out: the first one
    /// after `after`, or the first of all, so that fan-outs take turns. The chunk and the
    /// fan-out's progress commit together, so a crash resumes where it stopped and nothing is
    /// created twice. `None` when no fan-out is pending (or, on a shared store, every pending
    /// one is being worked on by another node). The deliveries keep the publish's time as
    /// their creation time; their ids carry `now`, so that they sort after those of earlier
    /// chunks and each chunk's ids land together in the ids' index.
    async fn fan_out(
        &self,
        after: i64,
        limit: usize,
        now: Millis,
    ) -> StoreResult<Option<FannedOut>>;
    async fn claim(
        &self,
        requests: Vec<ClaimRequest>,
        now: Millis,
        lease_until: Millis,
    ) -> StoreResult<Vec<ClaimBatch>>;
    async fn record(&self, attempts: Vec<AttemptRecord>, now: Millis)
    -> StoreResult<RecordEffects>;
    /// Gives leased deliveries back unattempted (the dispatcher had no room, or is shutting
    /// down): claimable again at once, no attempt counted.
    async fn release(&self, leases: Vec<(i64, i64)>, now: Millis) -> StoreResult<()>;
    async fn get_delivery(&self, tenant_id: &str, id: &str) -> StoreResult<Option<DeliveryView>>;
    /// The deliveries of one event, one per stream it went to.
    async fn event_deliveries(
        &self,
        tenant_id: &str,
        event_id: &str,
    ) -> StoreResult<Vec<DeliveryView>>;
    /// A stream's deliveries, newest first, after the cursor `before` (a `Page::next`).
    async fn list_deliveries(
        &self,
        tenant_id: &str,
        stream_id: &str,
        filter: DeliveryFilter,
        before: Option<i64>,
        take: usize,
    ) -> StoreResult<Page<DeliveryView>>;
    /// Queues the event for the stream again (creating its delivery if the stream never had
    /// one): due now, with a fresh retry budget. `None` if no such event exists.
    async fn redeliver_event(
        &self,
        tenant_id: &str,
        stream_id: &str,
        event_id: &str,
        now: Millis,
    ) -> StoreResult<Option<u64>>;
    /// Queues every matching delivery of the stream again; counts only when `dry_run`.
    /// Attempts under way are left alone.
    async fn redeliver(
        &self,
        tenant_id: &str,
        stream_id: &str,
        filter: DeliveryFilter,
        dry_run: bool,
        now: Millis,
    ) -> StoreResult<u64>;
    async fn backlog(&self, tenant_id: &str, stream_id: &str) -> StoreResult<Backlog>;
    /// Every enabled stream with pending deliveries, across tenants: how many, and the
    /// earliest due time (for the metrics endpoint; one scan of the pending deliveries).
    async fn backlogs(&self) -> StoreResult<Vec<StreamBacklog>>;
    /// Every stream of the tenant's backlog, and outcomes per hour from `from` (inclusive) to
    /// `to` (exclusive).
    async fn stream_activity(
        &self,
        tenant_id: &str,
        from: Millis,
        to: Millis,
    ) -> StoreResult<StreamActivity>;
    /// The hourly rollups of a stream from `from` (inclusive) to `to` (exclusive).
    async fn stats(
        &self,
        tenant_id: &str,
        stream_id: &str,
        from: Millis,
        to: Millis,
    ) -> StoreResult<Vec<StatsRow>>;

    // The audit log.
    /// Events newest first, after the cursor `before` (a `Page::next`).
    async fn list_events(
        &self,
        tenant_id: &str,
        filter: EventFilter,
        before: Option<i64>,
        take: usize,
    ) -> StoreResult<Page<LoggedEvent>>;
    /// The newest event with this id (and source, when given).
    async fn get_event(
        &self,
        tenant_id: &str,
        id: &str,
        source: Option<&str>,
    ) -> StoreResult<Option<LoggedEvent>>;
    /// Erases the matching events down to their `id`, `source`, `type` and `time` (see
    /// `ERASED_EVENT`), and drops the response bodies of their attempts; their deliveries and
    /// the attempts' outcomes stay. A delivery still pending sends what is left. Returns how
    /// many events were erased.
    async fn erase(&self, tenant_id: &str, what: Erase, now: Millis) -> StoreResult<u64>;
    /// The position a reader of the tenant's event log starts from; `None` when `start` is
    /// an event no longer in the log (removed by retention, or never the tenant's), so the
    /// reader cannot know what it missed.
    async fn log_position(
        &self,
        tenant_id: &str,
        start: LogStart,
    ) -> StoreResult<Option<LogPosition>>;
    /// Up to `take` events of the tenant's log after `after`, in log order, each with its
    /// position. Only events that no reader can later find before them are returned: a
    /// reader that resumes after the last one never skips an event committed late.
    async fn read_log(
        &self,
        tenant_id: &str,
        after: LogPosition,
        take: usize,
    ) -> StoreResult<Vec<(LogPosition, LoggedEvent)>>;
    /// Retention, across tenants: deletes up to `limit` events received before
    /// `events_before` that have nothing pending (with their deliveries, attempts and
    /// rollups), and drops response bodies of attempts made before `bodies_before`.
    async fn sweep(
        &self,
        events_before: Option<Millis>,
        bodies_before: Option<Millis>,
        limit: usize,
    ) -> StoreResult<Swept>;
}

/// Rows of two tenants as a store at schema version 10 holds them, for each store's test of
/// the upgrade to version 11: the same event id in both tenants, a pending delivery each.
#[cfg(test)]
const UPGRADE_TEST_ROWS: &str =
    "INSERT INTO tenants (id, name, created_at) VALUES ('ten_a', 'a', 0), ('ten_b', 'b', 0);
     INSERT INTO events (seq, tenant_id, id, source, type, time, data, received_at) VALUES
         (1, 'ten_a', 'e1', 'src', 'user.created', 0, '{}', 0),
         (2, 'ten_b', 'e1', 'src', 'user.created', 0, '{}', 0);
     INSERT INTO deliveries (seq, tenant_id, id, stream_id, event_seq, event_type, status,
         created_at, updated_at) VALUES
         (1, 'ten_a', 'dlv_1', 'est_a', 1, 'user.created', 'pending', 0, 0),
         (2, 'ten_b', 'dlv_2', 'est_b', 2, 'user.created', 'pending', 0, 0);";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_use_inclusive_upper_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(30_000), 13);
        assert_eq!(latency_bucket(30_001), 14);
    }
}
