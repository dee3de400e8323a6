//! Wake-ups between nodes: the store announces streams whose deliveries became due without a
//! lease (published, released, redelivered), tenants with new events in their log (for its
//! readers), and changes to stream definitions, and one
//! dedicated connection per node `LISTEN`s for them. A notification is only a hint: a node
//! also polls, and after any reconnection it treats everything as changed, so nothing sent
//! while it was not listening is missed for longer than one poll.
//!
//! Due work is announced after its transaction commits, coalesced, from one task: PostgreSQL
//! serialises the commits of notifying transactions, so notifying inside every publish would
//! make publishes queue behind each other. New events alone are announced at most every
//! [`EVENTS_EVERY`]; their readers on other nodes poll as well.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::{DUE_CHANNEL, EVENTS_CHANNEL, STREAMS_CHANNEL, Target};

/// New events alone are announced at most once per this long after the previous
/// announcement. Each announcement is a transaction of its own and wakes the listening
/// connection of every node; a node busy publishing announced its tenant's new events once
/// per group commit, every few milliseconds. Due work is announced at once: on a cluster
/// that splits roles, it is how the delivering nodes hear of every new delivery.
const EVENTS_EVERY: Duration = Duration::from_millis(10);

/// Announces streams with due work and tenants with new events to every node, a batch of
/// them per notifying statement.
#[derive(Clone)]
pub(super) struct Announcer(mpsc::UnboundedSender<(&'static str, String)>);

impl Announcer {
    /// Starts the announcing task; it ends when the announcer is dropped, once what it was
    /// given is announced.
    pub fn start(pool: Pool) -> Announcer {
        let (tx, mut rx) = mpsc::unbounded_channel::<(&'static str, String)>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut last: Option<tokio::time::Instant> = None;
            while rx.recv_many(&mut batch, 1024).await > 0 {
                // Only new events: held until `EVENTS_EVERY` after the last announcement,
                // gathering what comes meanwhile, unless due work comes too.
                if let Some(last) = last {
                    let until = last + EVENTS_EVERY;
                    while batch.iter().all(|(channel, _)| *channel == EVENTS_CHANNEL) {
                        match tokio::time::timeout_at(until, rx.recv_many(&mut batch, 1024)).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
                batch.sort_unstable();
                batch.dedup();
                if let Err(e) = announce(&pool, &batch).await {
                    // Other nodes find the work, and the log's readers the events, at their
                    // next poll.
                    tracing::debug!(error = %e, "could not announce due work");
                }
                batch.clear();
                last = Some(tokio::time::Instant::now());
            }
        });
        Announcer(tx)
    }

    pub fn due(&self, streams: impl IntoIterator<Item = String>) {
        for stream in streams {
            let _ = self.0.send((DUE_CHANNEL, stream));
        }
    }

    /// The tenant's event log has new events.
    pub fn events(&self, tenant_id: &str) {
        let _ = self.0.send((EVENTS_CHANNEL, tenant_id.to_string()));
    }
}

async fn announce(pool: &Pool, batch: &[(&'static str, String)]) -> super::StoreResult<()> {
    let (channels, payloads): (Vec<&str>, Vec<&str>) =
        batch.iter().map(|(c, p)| (*c, p.as_str())).unzip();
    pool.get()
        .await?
        .execute(
            "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS u(c, p)",
            &[&channels, &payloads],
        )
        .await?;
    Ok(())
}

/// What another node (or this one) announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// This stream has deliveries due now.
    Due(String),
    /// This tenant's event log has new events.
    Events(String),
    /// Stream definitions changed, or notifications may have been missed: reload them all.
    StreamsChanged,
}

const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Listens until `shutdown`, reconnecting whenever the connection is lost, and passes every
/// notification to `deliver`.
pub async fn listen(
    target: Target,
    deliver: impl Fn(Notice) + Send + 'static,
    shutdown: CancellationToken,
) {
    let mut reported = false;
    while !shutdown.is_cancelled() {
        match listen_once(&target, &deliver, &shutdown, &mut reported).await {
            Ok(()) => return,
            Err(e) if !reported => {
                tracing::warn!(error = %e, "lost the notification connection; polling until it is back");
                reported = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
        }
    }
}

/// One connection's lifetime: `Ok` only when shut down.
async fn listen_once(
    target: &Target,
    deliver: &impl Fn(Notice),
    shutdown: &CancellationToken,
    reported: &mut bool,
) -> Result<(), String> {
    let (client, mut connection) = target.connect().await.map_err(|e| crate::error_chain(&e))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection only makes progress while polled; its messages come out here.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {DUE_CHANNEL}; LISTEN {STREAMS_CHANNEL}; LISTEN {EVENTS_CHANNEL}"
        ))
        .await
        .map_err(|e| e.to_string())?;
    if std::mem::take(reported) {
        tracing::info!("listening for notifications from other nodes again");
    }
    // Whatever was announced while this node was not listening.
    deliver(Notice::StreamsChanged);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                driver.abort();
                return Ok(());
            }
            message = rx.recv() => match message {
                Some(n) if n.channel() == DUE_CHANNEL => deliver(Notice::Due(n.payload().to_string())),
                Some(n) if n.channel() == EVENTS_CHANNEL => deliver(Notice::Events(n.payload().to_string())),
                Some(_) => deliver(Notice::StreamsChanged),
                None => break,
            }
        }
    }
    drop(client);
    match driver.await {
        Ok(Err(e)) => Err(e.to_string()),
        _ => Err("the connection closed".into()),
    }
}
