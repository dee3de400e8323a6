//! What an operation refuses, and why. Each case says in words what went wrong (its
//! `Display` is the message a person reads, in the API's error body or beside a form's
//! field); the API maps each case to its status and stable code. Store failures keep their
//! cause for the log.

use crate::catalog::schema::DataError;
use crate::event::EventError;
use crate::store::StoreError;

use super::Scope;
use super::limits::MAX_CONSECUTIVE_MISMATCHES;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input that does not make a valid request; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("no {what} with id `{id}`")]
    NotFound { what: &'static str, id: String },
    #[error("this token lacks the `{}` scope", .0.as_str())]
    MissingScope(Scope),
    /// The token holds the scope, but not the reach: a platform-only action, or a grant
    /// beyond what the token holds.
    #[error("{0}")]
    Forbidden(String),
    #[error("a tenant token acts only on its own tenant")]
    WrongTenant,
    #[error("no tenant with id `{0}`")]
    UnknownTenant(String),
    #[error(
        "the tenant has {count} {what}, the most it may have; delete one, or ask the \
         operator to raise `{setting}`"
    )]
    QuotaExceeded {
        count: usize,
        limit: usize,
        what: &'static str,
        /// The configuration key that sets the limit.
        setting: &'static str,
    },
    /// `what` names the limit and the key that sets it.
    #[error("{what}; retry in {retry_after} s")]
    RateLimited {
        what: &'static str,
        retry_after: u64,
    },
    #[error(
        "this stream's destination did not match {} checks in a row; it is not checked \
         again until it is updated (PATCH the stream with the destination it should have)",
        MAX_CONSECUTIVE_MISMATCHES
    )]
    DestinationChecksLocked,
    /// The thing to create exists, or a built-in one is in the way.
    #[error("{0}")]
    Conflict(String),
    /// Another stream of the tenant has the name (its id).
    #[error(
        "the stream `{0}` has this name; stream names are unique per tenant: choose another, \
         or rename that stream first"
    )]
    NameTaken(String),
    #[error("the stream is disabled: enable it before redelivering to it")]
    StreamDisabled,
    #[error("the default tenant cannot be deleted")]
    DefaultTenant,
    /// The stream's destination kind keeps no stream secret to show or rotate.
    #[error("`{0}` destinations are not signed by Herald and keep no secret")]
    NoStreamSecret(&'static str),
    #[error("`{0}` is not in the event type catalog")]
    UnknownEventType(String),
    #[error("`data` does not match the schema of `{event_type}`: {error}")]
    InvalidData {
        event_type: String,
        error: DataError,
    },
    /// The destination's client cannot be built (an unusable configuration).
    #[error("{0}")]
    DestinationUnavailable(String),
    #[error(
        "this node serves as many event log readers as it may (half of max_connections); \
         retry after the time in Retry-After, or on another node"
    )]
    NodeReadersFull,
    #[error(
        "the tenant has {} event log readers open on this node, the most it may: close one, \
         or share one stream between consumers",
        super::log::MAX_READERS_PER_TENANT
    )]
    TenantReadersFull,
    #[error(
        "the tenant has {} listen sessions, the most it may: end one (Ctrl-C in its `herald \
         listen`, or DELETE /v1/listen-sessions/{{id}}); a disconnected one ends by itself {} \
         s after its connection dropped",
        super::listen::MAX_SESSIONS_PER_TENANT,
        super::listen::GRACE_MS / 1000
    )]
    ListenSessionLimit,
    #[error(
        "this node does not deliver (role `api`): connect `herald listen` to a node of role \
         `all`, which sends the session's deliveries over the connection"
    )]
    ListenUnavailable,
    /// An event refused by the parser, with its own code.
    #[error("{}", .0.message)]
    Event(EventError),
    #[error(transparent)]
    Store(StoreError),
    /// A failure inside Herald; the message is all the caller hears.
    #[error("{0}")]
    Internal(&'static str),
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            // The caller's mistake, not the store's.
            StoreError::NameTaken(id) => Error::NameTaken(id),
            err => Error::Store(err),
        }
    }
}

impl From<EventError> for Error {
    fn from(err: EventError) -> Self {
        Error::Event(err)
    }
}
