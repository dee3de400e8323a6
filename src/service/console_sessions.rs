//! Web console sessions: signing in to the console with an API token opens one, each request
//! resumes it, signing out ends it. The browser holds a random session id; the store keeps
//! only its hash, beside the hash of the token the session was opened with, and every resume
//! reads the session together with that token: a revoked token (or a configured admin token
//! given a new secret) ends its sessions at once, on every node sharing the store. A session
//! also ends [`IDLE_MS`] after its last use or [`ABSOLUTE_MS`] after sign-in, whichever
//! comes first. A session can also be opened by a sign-in link (`console_links`), for one
//! tenant and the scopes the link granted.

use super::{Caller, Error, Service};
use crate::clock::Millis;
use crate::store::{ConsoleSession, hash_token};

/// A session unused for this long ends (to within [`TOUCH_STEP_MS`]).
pub const IDLE_MS: Millis = 30 * 60 * 1000;
/// A session ends this long after sign-in however much it is used.
pub const ABSOLUTE_MS: Millis = 12 * 60 * 60 * 1000;
/// A session's end is moved only when it would move by at least this much: one write a
/// minute per session at most, not one per page.
pub const TOUCH_STEP_MS: Millis = 60 * 1000;

/// A session just opened: its id (for the cookie; the only time it is known) and its caller.
pub struct Opened {
    pub id: String,
    pub caller: Caller,
}

/// A session resumed: the caller its token makes, acting on the token's own tenant (a
/// platform token: the default tenant) until told otherwise.
pub struct Resumed {
    pub caller: Caller,
}

/// Opens a session for the holder of `token`; `None` when the token is not valid (unknown or
/// revoked). Sessions that have ended are cleared on the way.
pub async fn sign_in(service: &Service, token: &str) -> Result<Option<Opened>, Error> {
    let token = token.trim();
    if token.is_empty() {
        return Ok(None);
    }
    let token_hash = hash_token(token);
    // The store, not the token cache: a token revoked on another node a moment ago must not
    // open a session here.
    let Some(token) = service.store.find_token(token_hash).await? else {
        return Ok(None);
    };
    let now = service.clock.now_ms();
    if let Err(e) = service.store.delete_expired_console_sessions(now).await {
        // Clearing is housekeeping: the next sign-in tries again.
        tracing::warn!(error = %e, "could not clear ended console sessions");
    }
    let id = format!("hcs_{}", crate::ids::random_base62(32));
    service
        .store
        .create_console_session(ConsoleSession {
            hash: hash_token(&id),
            token_hash,
            tenant_id: token.tenant_id.clone(),
            scopes: None,
            name: None,
            created_at: now,
            expires_at: now + IDLE_MS.min(ABSOLUTE_MS),
        })
        .await?;
    tracing::info!(token = %token.id, tenant = ?token.tenant_id, "console session opened");
    Ok(Some(Opened {
        id,
        caller: Caller::new(token),
    }))
}

/// The session with this id, if it has not ended and its token is still valid; its idle end
/// moves forward.
pub async fn resume(service: &Service, id: &str) -> Result<Option<Resumed>, Error> {
    let hash = hash_token(id);
    let Some((session, token)) = service.store.find_console_session(hash).await? else {
        return Ok(None);
    };
    let now = service.clock.now_ms();
    if session.expires_at <= now {
        service.store.delete_console_session(hash).await?;
        return Ok(None);
    }
    let moved = (now + IDLE_MS).min(session.created_at + ABSOLUTE_MS);
    if moved - session.expires_at >= TOUCH_STEP_MS
        && !service.store.touch_console_session(hash, moved).await?
    {
        // Signed out meanwhile.
        return Ok(None);
    }
    let caller = if session.scopes.is_some() {
        // Opened by a sign-in link: its tenant and scopes, not the issuing token's.
        match super::console_links::session_caller(token, &session) {
            Some(caller) => caller,
            None => return Ok(None),
        }
    } else {
        Caller::new(token)
    };
    Ok(Some(Resumed { caller }))
}

/// Ends the session with this id (nothing to do if it has ended already).
pub async fn sign_out(service: &Service, id: &str) -> Result<(), Error> {
    if service.store.delete_console_session(hash_token(id)).await? {
        tracing::info!("console session closed");
    }
    Ok(())
}
