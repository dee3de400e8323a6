//! The dispatcher: turns pending deliveries into attempts.
//!
//! It keeps, per enabled stream, the stream's destination client (built once, again when the
//! stream changes), the requests in flight, a small queue of leased deliveries waiting for a
//! slot, and when the stream next has due work. It knows destinations only through their
//! interface (`destinations::Client`): hand it up to `max_batch` deliveries, get an outcome
//! for each.
//!
//! A slot is one request in flight to a destination, whatever it carries: one webhook POST,
//! or one EventBridge `PutEvents` of up to ten entries. Which stream starts the next request,
//! and how many a stream or a tenant may run at once, is the [`scheduler`]'s business: turns
//! across tenants then streams, a reserve of slots for the others, and an adaptive limit per
//! stream (at most `max_in_flight_per_stream`; `max_in_flight` in all), so a hung
//! destination soon holds a single slot and another tenant always finds one. A stream whose
//! requests keep failing has its circuit opened: it gives its queued deliveries back and sends
//! one probe at a time until its endpoint answers again. Deliveries
//! are leased in batches, up to twice a stream's limit (times its batch size; twice
//! `max_in_flight` requests' worth in all), before any request is sent (or arrive leased
//! from a publish); a finished request starts the next queued ones without a trip to the
//! store. A request's batch is taken from what is already queued at the moment a slot frees
//! up, never waited for, and a delivery whose lease would lapse before its attempt could
//! finish is given back instead of sent: on a shared store another node may claim it once the
//! lease lapses, and must not find it still being sent. A lease lapses if it is never
//! returned, so a lost one delays a delivery but never drops it. Outcomes go to the
//! [`recorder`], which stores them in batches. Publishes and stream changes wake the
//! dispatcher through a [`Signal`]; otherwise it sleeps on the injected clock until the
//! next due time. Each attempt is counted for the metrics by its destination kind and what
//! followed, and each request holds its tenant's slots gauge while it runs; the handles are
//! resolved when a stream is loaded, so an attempt only bumps atomics.

pub mod fanout;
mod recorder;
pub mod retry;
pub mod scheduler;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::clock::{Clock, Millis};
use crate::destinations::{Client, Destinations, ErrorKind, Message, Outcome, Report};
use crate::metrics::{DestinationMetrics, Metrics, StoreCaller, TenantSlots};
use crate::store::{AttemptRecord, ClaimBatch, ClaimRequest, Claimed, Store, StoreError};
use crate::stream::{Stream, StreamStatus};
use scheduler::{Circuit, CircuitChange, Fairness, Feedback, Limit, Readiness};

/// How often the dispatcher looks for due work when nothing woke it.
const POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Wait after a failed store call before trying again.
const STORE_RETRY_MS: Millis = 1_000;
/// What a lease must have left beyond the attempt timeout for an attempt to start under it:
/// time to record the outcome.
const LEASE_MARGIN_MS: Millis = 5_000;

/// Wakes the dispatcher: new deliveries for some streams, deliveries already leased for it,
/// or changed stream definitions; and the fan-out worker, for a publish that left it work.
#[derive(Default)]
pub struct Signal {
    notify: Notify,
    fan_out: Notify,
    woken: Mutex<HashSet<String>>,
    handed: Mutex<Vec<Claimed>>,
    streams_changed: std::sync::atomic::AtomicBool,
}

impl Signal {
    /// Deliveries became due now for these streams.
    pub fn wake<'a>(&self, stream_ids: impl IntoIterator<Item = &'a String>) {
        let mut woken = self.woken.lock().unwrap_or_else(|e| e.into_inner());
        let before = woken.len();
        woken.extend(stream_ids.into_iter().cloned());
        if woken.len() != before {
            drop(woken);
            self.notify.notify_one();
        }
    }

    /// Deliveries leased when they were published, for the dispatcher to start.
    pub fn hand_over(&self, deliveries: impl IntoIterator<Item = Claimed>) {
        let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        let before = handed.len();
        handed.extend(deliveries);
        if handed.len() != before {
            drop(handed);
            self.notify.notify_one();
        }
    }

    /// Takes the deliveries handed over and not yet started: the dispatcher's, and at the
    /// stop, those of publishes finished after the dispatcher stopped, to give back.
    pub fn take_handed(&self) -> Vec<Claimed> {
        std::mem::take(&mut *self.handed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A publish committed a pending fan-out.
    pub fn fan_out_pending(&self) {
        self.fan_out.notify_one();
    }

    /// A stream was created, changed or deleted.
    pub fn streams_changed(&self) {
        self.streams_changed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn take_woken(&self) -> HashSet<String> {
        std::mem::take(&mut *self.woken.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn take_streams_changed(&self) -> bool {
        self.streams_changed
            .swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    pub max_in_flight: usize,
    pub max_in_flight_per_stream: usize,
    /// How long a claim lasts; longer than any attempt can take.
    pub lease: Duration,
    /// The longest one request to a destination may take; a delivery is started only with
    /// this much of its lease left, plus time to record the outcome (up to 5 s, at most half
    /// of what the lease has beyond the timeout).
    pub attempt_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The store is shared with other nodes: every stream is looked at each poll, since work
    /// can become due there (a lapsed lease of a node that died) without a notification.
    pub shared: bool,
}

/// An enabled stream as the dispatcher holds it: its definition and its destination client.
struct ActiveStream {
    stream: Stream,
    client: Arc<Client>,
    /// What the client was built from (the destination as stored, the encoding, which
    /// stream secrets), to tell when it must be rebuilt.
    built_from: BuiltFrom,
    /// Its destination kind's counters, and its tenant's slots in use.
    metrics: DestinationMetrics,
    slots: TenantSlots,
}

#[derive(PartialEq)]
struct BuiltFrom {
    destination: Vec<u8>,
    encoding: crate::destinations::Encoding,
    secrets: Vec<(crate::secret::Secret, Option<Millis>)>,
}

struct StreamSlot {
    active: Arc<ActiveStream>,
    /// No longer enabled: its running attempts finish, nothing more is claimed or started,
    /// and the slot goes when the last attempt ends.
    draining: bool,
    /// Requests in flight.
    in_flight: usize,
    /// Deliveries in those requests.
    sending: usize,
    /// How many requests it may run at once, adapted to how its destination copes.
    limit: Limit,
    /// Whether its endpoint is taken to be down, and when to probe it.
    circuit: Circuit,
    /// Leased deliveries waiting for a free slot.
    queued: VecDeque<Claimed>,
    /// When this stream next has due work; `None` when nothing is known to be pending.
    next_due: Option<Millis>,
}

impl StreamSlot {
    /// The deliveries one request of this stream carries at most.
    fn batch(&self) -> usize {
        self.active.client.max_batch().max(1)
    }

    /// Deliveries held, running or queued.
    fn held(&self) -> usize {
        self.sending + self.queued.len()
    }

    /// What it holds in requests' worth (rounded up): the unit the dispatcher's limits count.
    fn units(&self) -> usize {
        self.held().div_ceil(self.batch())
    }

    /// Requests it may have in flight at `now`: its limit, or a probe's one while its
    /// circuit is open.
    fn allowed(&self, now: Millis) -> usize {
        self.circuit.allowed(self.limit.get(), now)
    }

    /// Whether it can start a request now.
    fn readiness(&self, now: Millis) -> Readiness {
        if !self.draining && !self.queued.is_empty() && self.in_flight < self.allowed(now) {
            Readiness::Ready
        } else {
            Readiness::NotNow
        }
    }
}

/// What a finished request tells the dispatcher.
struct Done {
    keys: Vec<i64>,
    tenant_id: String,
    stream_id: String,
    retry_at: Option<Millis>,
    /// How the destination coped, for the stream's adaptive limit.
    feedback: Feedback,
    /// Some delivery of the request was delivered: the endpoint is up, whatever the rest did.
    delivered_any: bool,
    /// Leases of deliveries the destination did not send (`Outcome::NotSent`), to give back
    /// unattempted.
    not_sent: Vec<(i64, i64)>,
}

/// What every attempt needs; shared by the dispatcher and its attempt tasks.
struct Shared {
    clock: Arc<dyn Clock>,
    recorder: recorder::Handle,
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    destinations: Destinations,
    signal: Arc<Signal>,
    config: DispatchConfig,
    metrics: Arc<Metrics>,
    streams: HashMap<String, StreamSlot>,
    /// Who starts the next request: turns across tenants and streams, and the slots each
    /// tenant holds.
    fairness: Fairness,
    /// Where the next claim's walk over the streams starts, so no stream is always first.
    claim_cursor: usize,
    /// Due streams the last claim passed over because their tenant held its share: they
    /// wait for a request to finish rather than wake the dispatcher.
    held_back: HashSet<String>,
    /// Leases too short to start an attempt under, to give back.
    expiring: Vec<(i64, i64)>,
    /// Leases of deliveries queued for a stream whose circuit opened, to give back.
    paused: Vec<(i64, i64)>,
    /// Leases held by queued and running attempts, given back if shutdown cuts them short.
    leases: HashMap<i64, i64>,
    /// When every stream is next looked at regardless of what it is known to have (shared
    /// stores only).
    next_poll: Millis,
    /// The store is failing: logged once when it starts and once when it ends.
    outage: bool,
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        destinations: Destinations,
        signal: Arc<Signal>,
        config: DispatchConfig,
        metrics: Arc<Metrics>,
    ) -> Dispatcher {
        Dispatcher {
            store,
            clock,
            destinations,
            signal,
            fairness: Fairness::new(config.max_in_flight),
            config,
            metrics,
            streams: HashMap::new(),
            claim_cursor: 0,
            held_back: HashSet::new(),
            expiring: Vec::new(),
            paused: Vec::new(),
            leases: HashMap::new(),
            next_poll: Millis::MIN,
            outage: false,
        }
    }

    /// Runs until `shutdown`, then lets attempts in flight finish for the grace period,
    /// stores every outcome, and gives back the leases of attempts that did not run.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (recorder, recording) = recorder::start(
            self.store.clone(),
            self.clock.clone(),
            self.signal.clone(),
            self.metrics.clone(),
            shutdown.clone(),
        );
        let shared = Arc::new(Shared {
            clock: self.clock.clone(),
            recorder,
        });
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let tracker = TaskTracker::new();
        let cut_short = CancellationToken::new();
        let spawn = Spawner {
            shared: &shared,
            tracker: &tracker,
            done: &done_tx,
            cut_short: &cut_short,
        };
        self.signal.streams_changed();

        while !shutdown.is_cancelled() {
            while let Ok(done) = done_rx.try_recv() {
                self.finished(done, &spawn);
            }
            // Work first, then stream changes: a change made before the work was announced
            // (a secret rotated, then an event published) is then always loaded before the
            // work starts.
            let woken = self.signal.take_woken();
            let handed = self.signal.take_handed();
            if self.signal.take_streams_changed() && !self.reload().await {
                self.signal.wake(&woken);
                self.signal.hand_over(handed);
                self.pause(&shutdown).await;
                self.signal.streams_changed();
                continue;
            }
            if self.config.shared && self.clock.now_ms() >= self.next_poll {
                self.next_poll = self.clock.now_ms() + POLL_INTERVAL.as_millis() as Millis;
                for slot in self.streams.values_mut().filter(|s| !s.draining) {
                    slot.next_due = Some(Millis::MIN);
                }
            }
            for id in woken {
                if let Some(slot) = self.streams.get_mut(&id) {
                    slot.next_due = Some(Millis::MIN);
                }
            }
            if !handed.is_empty() {
                self.accept(handed, &spawn).await;
            }
            self.give_back_set_aside().await;
            let now = self.clock.now_ms();
            let requests = self.requests(now);
            if !requests.is_empty() {
                let lease_until = now + self.config.lease.as_millis() as Millis;
                match self.store.claim(requests, now, lease_until).await {
                    Ok(batches) => {
                        self.store_back();
                        // The claim may hold work published after a stream change that this
                        // dispatcher has not loaded yet (a secret rotated, then an event
                        // published): load it before the work starts.
                        if self.signal.take_streams_changed() && !self.reload().await {
                            self.signal.streams_changed();
                        }
                        let mut give_back = Vec::new();
                        for batch in batches {
                            if self
                                .streams
                                .get(&batch.stream_id)
                                .is_some_and(|s| !s.draining)
                            {
                                self.enqueue(batch, &spawn);
                            } else {
                                give_back.extend(batch.deliveries.iter().map(|c| (c.key, c.lease)));
                            }
                        }
                        if !give_back.is_empty()
                            && let Err(e) = self.store.release(give_back, now).await
                        {
                            self.count_store_error(&e);
                            tracing::warn!(error = %e, "could not release deliveries; their leases lapse");
                        }
                        continue;
                    }
                    Err(e) => {
                        self.store_failed("claiming due deliveries", &e);
                        self.pause(&shutdown).await;
                        continue;
                    }
                }
            }
            let wake_at = self.next_wake(now);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.signal.notify.notified() => {}
                Some(done) = done_rx.recv() => self.finished(done, &spawn),
                _ = self.clock.sleep_until(wake_at) => {}
            }
        }

        // Queued deliveries do not start; running ones get the grace period.
        for claimed in self.signal.take_handed() {
            self.leases.insert(claimed.key, claimed.lease);
        }
        for slot in self.streams.values_mut() {
            slot.queued.clear();
        }
        tracker.close();
        if tokio::time::timeout(self.config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            cut_short.cancel();
            tracker.wait().await;
        }
        while let Ok(done) = done_rx.try_recv() {
            for key in done.keys {
                self.leases.remove(&key);
            }
            self.leases.extend(done.not_sent);
        }
        // Leases set aside (too short to start under, or paused by a circuit) are given back
        // with the rest.
        let set_aside = std::mem::take(&mut self.expiring);
        for (key, lease) in set_aside
            .into_iter()
            .chain(std::mem::take(&mut self.paused))
        {
            self.leases.insert(key, lease);
        }
        drop(shared);
        // Every attempt task has ended: the recorder stores what it holds, then stops; a
        // failing store gets the grace period again, then what is unstored is made again
        // after the restart.
        let mut recording = recording;
        match tokio::time::timeout(self.config.shutdown_grace, &mut recording).await {
            Ok(Err(e)) => tracing::error!(error = %e, "the recorder ended abnormally"),
            Ok(Ok(())) => {}
            Err(_) => {
                recording.abort();
                tracing::warn!(
                    "the store did not take the last outcomes in time; those deliveries are made again after the restart"
                );
            }
        }
        self.release_leases().await;
    }

    async fn release_leases(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        let leases: Vec<_> = self.leases.drain().collect();
        let count = leases.len();
        let now = self.clock.now_ms();
        match self.store.release(leases, now).await {
            Ok(()) => tracing::info!(count, "released unfinished deliveries for the next start"),
            Err(e) => {
                self.count_store_error(&e);
                tracing::warn!(error = %e, count, "could not release leases; they expire on their own")
            }
        }
    }

    /// Delivery pauses while the store fails; the first failure of an outage is logged, and
    /// every one counted.
    fn store_failed(&mut self, doing: &str, e: &StoreError) {
        self.count_store_error(e);
        if !self.outage {
            tracing::error!(error = %e, "{doing} failed; delivery pauses until the store answers again");
            self.outage = true;
        }
    }

    fn count_store_error(&self, e: &StoreError) {
        self.metrics.store_error(StoreCaller::Dispatcher, e);
    }

    fn store_back(&mut self) {
        if std::mem::take(&mut self.outage) {
            tracing::info!("the store answers again; delivery resumes");
        }
    }

    async fn pause(&self, shutdown: &CancellationToken) {
        let until = self.clock.now_ms() + STORE_RETRY_MS;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.clock.sleep_until(until) => {}
        }
    }

    /// Reloads the enabled streams and their keys, keeping in-flight counts and queues. False
    /// if the store could not be read.
    async fn reload(&mut self) -> bool {
        let streams = match self.store.streams_with_status(StreamStatus::Enabled).await {
            Ok(streams) => streams,
            Err(e) => {
                self.store_failed("loading streams", &e);
                return false;
            }
        };
        let now = self.clock.now_ms();
        let mut next = HashMap::with_capacity(streams.len());
        for stream in streams {
            if !self
                .destinations
                .sends_here(&stream.id, &stream.destination)
            {
                continue;
            }
            let secrets = match self.store.secrets_for(&stream, now).await {
                Ok(secrets) => secrets,
                Err(e) => {
                    // One unreadable stream must not stop the others.
                    self.count_store_error(&e);
                    tracing::error!(error = %e, stream = %stream.id, "loading the stream's secrets failed; the stream is skipped");
                    continue;
                }
            };
            let built_from = BuiltFrom {
                destination: serde_json::to_vec(&stream.destination).unwrap_or_default(),
                encoding: stream.encoding(),
                secrets: secrets
                    .iter()
                    .map(|s| (s.secret.clone(), s.expires_at))
                    .collect(),
            };
            let previous = self.streams.remove(&stream.id);
            // A client built from the same settings is kept, and with it what it holds (a
            // connection pool, assumed-role credentials).
            let reusable = previous
                .as_ref()
                .filter(|p| p.active.built_from == built_from)
                .map(|p| p.active.client.clone());
            let same_destination = reusable.is_some();
            let client = match reusable {
                Some(client) => client,
                None => {
                    match stream
                        .destination
                        .build(stream.client_context(&secrets), &self.destinations)
                    {
                        Ok(client) => Arc::new(client),
                        Err(e) => {
                            tracing::error!(error = %e, stream = %stream.id, "the stream's destination could not be set up; the stream is skipped");
                            if let Some(previous) = previous {
                                self.streams.insert(stream.id.clone(), previous);
                            }
                            continue;
                        }
                    }
                }
            };
            let active = Arc::new(ActiveStream {
                metrics: self.metrics.delivery.destination(stream.destination.kind()),
                slots: self.metrics.delivery.slots(&stream.tenant_id),
                stream,
                client,
                built_from,
            });
            let per_stream = self.config.max_in_flight_per_stream;
            let (in_flight, sending, queued, limit, circuit) = previous.map_or_else(
                || {
                    let fresh = (Limit::new(per_stream), Circuit::default());
                    (0, 0, VecDeque::new(), fresh.0, fresh.1)
                },
                // What the limit and the circuit learnt holds for the destination they learnt
                // it from.
                |p| {
                    let (limit, circuit) = if same_destination {
                        (p.limit, p.circuit)
                    } else {
                        (Limit::new(per_stream), Circuit::default())
                    };
                    (p.in_flight, p.sending, p.queued, limit, circuit)
                },
            );
            let id = active.stream.id.clone();
            next.insert(
                id,
                StreamSlot {
                    active,
                    draining: false,
                    in_flight,
                    sending,
                    limit,
                    circuit,
                    queued,
                    // Unknown until asked: a changed stream may have become enabled with a backlog.
                    next_due: Some(Millis::MIN),
                },
            );
        }
        // Streams no longer enabled: their queued deliveries go back to the store; attempts
        // under way finish and are still counted.
        let mut give_back = Vec::new();
        for (id, mut slot) in self.streams.drain() {
            for claimed in slot.queued.drain(..) {
                self.leases.remove(&claimed.key);
                give_back.push((claimed.key, claimed.lease));
            }
            if slot.in_flight > 0 {
                next.insert(
                    id,
                    StreamSlot {
                        draining: true,
                        next_due: None,
                        ..slot
                    },
                );
            }
        }
        self.streams = next;
        let tenants = self
            .streams
            .values()
            .map(|slot| slot.active.stream.tenant_id.as_str())
            .collect();
        self.metrics.delivery.keep_tenants(&tenants);
        if !give_back.is_empty()
            && let Err(e) = self.store.release(give_back, now).await
        {
            self.count_store_error(&e);
            tracing::warn!(error = %e, "could not release queued deliveries; their leases expire");
        }
        true
    }

    /// Requests' worth of deliveries the dispatcher may still take on: at most twice
    /// `max_in_flight`, running and queued. A stream holding ten EventBridge entries holds one
    /// request's worth, as a stream holding one webhook delivery does.
    fn room(&self) -> usize {
        let held: usize = self.streams.values().map(StreamSlot::units).sum();
        (2 * self.config.max_in_flight).saturating_sub(held)
    }

    /// Streams with due work and room: each may hold up to twice its limit of requests'
    /// worth, running and queued, and is asked for more only once it holds less than its
    /// limit. When room runs short, a tenant is asked for no more than its share of it (see
    /// `scheduler`), and the walk starts at a different stream each time.
    fn requests(&mut self, now: Millis) -> Vec<ClaimRequest> {
        let mut room = self.room();
        let share = self.fairness.claim_share(room);
        let mut tenant_units: HashMap<&str, usize> = HashMap::new();
        if share != usize::MAX {
            for slot in self.streams.values() {
                *tenant_units
                    .entry(slot.active.stream.tenant_id.as_str())
                    .or_default() += slot.units();
            }
        }
        let due: Vec<&StreamSlot> = self
            .streams
            .values()
            .filter(|slot| {
                !slot.draining
                    && slot.active.stream.status == StreamStatus::Enabled
                    && slot.units() < slot.allowed(now)
                    && slot.next_due.is_some_and(|due| due <= now)
            })
            .collect();
        let mut requests = Vec::new();
        self.held_back.clear();
        if due.is_empty() {
            return requests;
        }
        self.claim_cursor = self.claim_cursor.wrapping_add(1);
        let start = self.claim_cursor % due.len();
        for slot in due[start..].iter().chain(&due[..start]) {
            let stream = &slot.active.stream;
            let units = slot.units();
            // An open circuit's probe: one delivery.
            let probe = !slot.circuit.is_closed();
            let most = if probe { 1 } else { 2 * slot.limit.get() };
            let mut claim_units = (most - units).min(room);
            if share != usize::MAX {
                let held = tenant_units.entry(stream.tenant_id.as_str()).or_default();
                claim_units = claim_units.min(share.saturating_sub(*held));
                *held += claim_units;
            }
            // A stream holding nothing always gets its first requests' worth, room or not, as
            // it gets a reserved slot: what others hold never keeps a newcomer waiting.
            if units == 0 {
                claim_units = claim_units.max(slot.allowed(now));
            }
            if claim_units == 0 {
                self.held_back.insert(stream.id.clone());
                continue;
            }
            room = room.saturating_sub(claim_units);
            requests.push(ClaimRequest {
                tenant_id: stream.tenant_id.clone(),
                stream_id: stream.id.clone(),
                // Up to that many requests' worth, counting the partial batch already held (a
                // probe's request carries one delivery).
                limit: (units + claim_units) * slot.circuit.batch(slot.batch()) - slot.held(),
            });
        }
        requests
    }

    /// When to look for due work again, if nothing wakes the dispatcher first. Only streams
    /// it could claim for count: one the last claim passed over (no room, or its tenant held
    /// its share) must wait for a request to finish, not spin.
    fn next_wake(&self, now: Millis) -> Millis {
        let mut poll = now + POLL_INTERVAL.as_millis() as Millis;
        if self.config.shared {
            poll = poll.min(self.next_poll);
        }
        self.streams
            .values()
            .filter(|s| {
                !s.draining
                    && s.units() < s.limit.get()
                    && !self.held_back.contains(&s.active.stream.id)
            })
            .filter_map(|s| match (s.circuit.is_closed(), s.circuit.probe_at()) {
                (true, _) => s.next_due,
                // An open circuit holding nothing sends its probe when both are due.
                (false, Some(probe_at)) if s.units() == 0 => s.next_due.map(|d| d.max(probe_at)),
                // Its probe is in flight: its end wakes the dispatcher.
                (false, _) => None,
            })
            .fold(poll, Millis::min)
            .max(now + 1)
    }

    /// Takes deliveries leased at publish into their streams' queues while there is room;
    /// the rest go back to the store, to be claimed in turn.
    async fn accept(&mut self, handed: Vec<Claimed>, spawn: &Spawner<'_>) {
        let mut give_back = Vec::new();
        let mut streams = HashSet::new();
        // On a shared store, no more than a claim could take: what this node cannot start
        // soon, another node may. As with a claim, a stream that held nothing still takes
        // its first requests' worth, room or not.
        let now = self.clock.now_ms();
        let mut room = if self.config.shared {
            self.room()
        } else {
            usize::MAX
        };
        // Streams that held nothing when this hand-over began.
        let mut newcomers: HashSet<String> = HashSet::new();
        for claimed in handed {
            let Some(slot) = self
                .streams
                .get_mut(&claimed.stream_id)
                .filter(|slot| !slot.draining)
            else {
                give_back.push((claimed.key, claimed.lease));
                continue;
            };
            let new_unit = slot.held() % slot.batch() == 0;
            let takes = slot.circuit.is_closed()
                && slot.units() < 2 * slot.limit.get()
                && (!new_unit
                    || room > 0
                    || ((slot.held() == 0 || newcomers.contains(&claimed.stream_id))
                        && slot.units() < slot.allowed(now)));
            if !takes {
                slot.next_due = Some(Millis::MIN);
                give_back.push((claimed.key, claimed.lease));
                continue;
            }
            if new_unit {
                room = room.saturating_sub(1);
            }
            if self.config.shared && slot.held() == 0 {
                newcomers.insert(claimed.stream_id.clone());
            }
            self.leases.insert(claimed.key, claimed.lease);
            streams.insert((claimed.tenant_id.clone(), claimed.stream_id.clone()));
            slot.queued.push_back(claimed);
        }
        for (tenant_id, stream_id) in streams {
            self.fairness.mark_ready(&tenant_id, &stream_id);
        }
        // Given back before the rest start: once this node's requests are under way, what
        // it left is claimable (and counted as waiting) everywhere.
        if !give_back.is_empty()
            && let Err(e) = self.store.release(give_back, self.clock.now_ms()).await
        {
            self.count_store_error(&e);
            tracing::warn!(error = %e, "could not release deliveries; their leases lapse");
        }
        self.schedule(spawn);
    }

    fn enqueue(&mut self, batch: ClaimBatch, spawn: &Spawner<'_>) {
        let Some(slot) = self.streams.get_mut(&batch.stream_id) else {
            return;
        };
        slot.next_due = batch.next_due;
        for claimed in batch.deliveries {
            self.leases.insert(claimed.key, claimed.lease);
            slot.queued.push_back(claimed);
        }
        self.fairness.mark_ready(&batch.tenant_id, &batch.stream_id);
        self.schedule(spawn);
    }

    /// Starts requests while slots are free, in the turns the scheduler gives, each with as
    /// many queued deliveries as the stream's client takes at once. A delivery whose lease
    /// would lapse before its attempt could finish is set aside to be given back.
    fn schedule(&mut self, spawn: &Spawner<'_>) {
        let now = self.clock.now_ms();
        let needed = now + self.start_budget();
        while let Some((tenant_id, stream_id)) = self.fairness.next(|id| {
            self.streams
                .get(id)
                .map_or(Readiness::NotNow, |slot| slot.readiness(now))
        }) {
            let Some(slot) = self.streams.get_mut(&stream_id) else {
                continue;
            };
            let batch_size = slot.circuit.batch(slot.batch());
            let mut batch = Vec::with_capacity(batch_size.min(slot.queued.len()));
            while batch.len() < batch_size {
                let Some(claimed) = slot.queued.pop_front() else {
                    break;
                };
                if claimed.lease_until < needed {
                    self.leases.remove(&claimed.key);
                    self.expiring.push((claimed.key, claimed.lease));
                    slot.next_due = Some(Millis::MIN);
                    continue;
                }
                batch.push(claimed);
            }
            if batch.is_empty() {
                continue;
            }
            slot.in_flight += 1;
            slot.sending += batch.len();
            slot.circuit.started();
            self.fairness.started(&tenant_id, &stream_id);
            spawn.attempt(slot.active.clone(), batch);
        }
    }

    /// What a lease must have left for an attempt to start under it: the attempt's timeout
    /// and time to record its outcome (never more than a fresh lease has).
    fn start_budget(&self) -> Millis {
        let timeout = self.config.attempt_timeout.as_millis() as Millis;
        let lease = self.config.lease.as_millis() as Millis;
        timeout + LEASE_MARGIN_MS.min((lease - timeout).max(0) / 2)
    }

    /// Gives back the leases set aside: those too short to start an attempt under (claimed
    /// again at once, with a fresh lease), and those of streams whose circuit opened (due
    /// again when it closes).
    async fn give_back_set_aside(&mut self) {
        if self.expiring.is_empty() && self.paused.is_empty() {
            return;
        }
        let count = self.expiring.len();
        if count > 0 {
            tracing::warn!(
                count,
                "deliveries waited in the queue until their leases ran short; giving them back to be claimed again"
            );
        }
        let mut leases = std::mem::take(&mut self.expiring);
        leases.append(&mut self.paused);
        if let Err(e) = self.store.release(leases, self.clock.now_ms()).await {
            self.count_store_error(&e);
            tracing::warn!(error = %e, "could not release deliveries; their leases lapse");
        }
    }

    fn finished(&mut self, done: Done, spawn: &Spawner<'_>) {
        self.fairness.finished(&done.tenant_id, &done.stream_id);
        for key in &done.keys {
            self.leases.remove(key);
        }
        // Given back with the leases set aside, at the next turn of the loop.
        self.paused.extend(done.not_sent.iter().copied());
        if let Some(slot) = self.streams.get_mut(&done.stream_id) {
            slot.limit.observe(done.feedback, slot.in_flight);
            // A batch partly refused (an EventBridge entry throttled) still shows the
            // endpoint up: that is for the limit to weigh, not the circuit.
            let up = if done.delivered_any {
                Feedback::Succeeded
            } else {
                done.feedback
            };
            match slot.circuit.observe(up, self.clock.now_ms()) {
                Some(CircuitChange::Opened { probe_in_ms }) => {
                    tracing::warn!(
                        tenant = %done.tenant_id,
                        stream = %done.stream_id,
                        probe_in_ms,
                        "the stream's endpoint keeps failing: its circuit opens, the backlog waits and one delivery at a time probes the endpoint"
                    );
                    for claimed in slot.queued.drain(..) {
                        self.leases.remove(&claimed.key);
                        self.paused.push((claimed.key, claimed.lease));
                    }
                    // Due again at the probe: the wake-up waits for both.
                    slot.next_due = Some(Millis::MIN);
                }
                Some(CircuitChange::StillOpen { probe_in_ms }) => {
                    tracing::debug!(stream = %done.stream_id, probe_in_ms, "the probe failed");
                }
                Some(CircuitChange::Closed) => {
                    tracing::info!(
                        tenant = %done.tenant_id,
                        stream = %done.stream_id,
                        "the stream's endpoint answers again: its circuit closes and the backlog resumes"
                    );
                    slot.next_due = Some(Millis::MIN);
                }
                None => {}
            }
            slot.in_flight = slot.in_flight.saturating_sub(1);
            slot.sending = slot.sending.saturating_sub(done.keys.len());
            if slot.draining {
                if slot.in_flight == 0 {
                    self.streams.remove(&done.stream_id);
                }
            } else {
                if let Some(at) = done.retry_at {
                    slot.next_due = Some(slot.next_due.map_or(at, |due| due.min(at)));
                }
                if !slot.queued.is_empty() {
                    self.fairness.mark_ready(&done.tenant_id, &done.stream_id);
                }
            }
        }
        // The freed slot goes to whoever's turn it is, this stream or another.
        self.schedule(spawn);
    }
}

/// Starts attempt tasks that report back when done.
struct Spawner<'a> {
    shared: &'a Arc<Shared>,
    tracker: &'a TaskTracker,
    done: &'a mpsc::UnboundedSender<Done>,
    cut_short: &'a CancellationToken,
}

impl Spawner<'_> {
    fn attempt(&self, active: Arc<ActiveStream>, batch: Vec<Claimed>) {
        let (shared, done, cut_short) = (
            self.shared.clone(),
            self.done.clone(),
            self.cut_short.clone(),
        );
        // The tenant holds the slot until the attempt ends, however it ends.
        let slot = active.slots.take();
        self.tracker.spawn(async move {
            let _slot = slot;
            let stream_id = active.stream.id.clone();
            let count = batch.len();
            tokio::select! {
                finished = attempt(&shared, &active, batch) => { let _ = done.send(finished); }
                _ = cut_short.cancelled() => {
                    // The leases stay held and are released by the dispatcher.
                    tracing::info!(stream = %stream_id, count, "attempt cut short by shutdown");
                }
            }
        });
    }
}

/// One request of one or several deliveries of a stream: send, then for each delivery
/// decide its next step from its own outcome and hand the record to the recorder.
async fn attempt(shared: &Shared, active: &ActiveStream, batch: Vec<Claimed>) -> Done {
    let stream = &active.stream;
    let started_at = shared.clock.now_ms();
    let messages: Vec<Message<'_>> = batch
        .iter()
        .map(|c| Message {
            id: &c.id,
            tenant_id: &c.tenant_id,
            event: &c.event,
        })
        .collect();
    let span = tracing::debug_span!(
        "attempt",
        tenant = %stream.tenant_id,
        stream = %stream.id,
        delivery = %batch[0].id,
        deliveries = batch.len(),
        // The first delivery's, recorded when exported.
        status = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let exported = crate::telemetry::exporting();
    if exported {
        crate::telemetry::export_attempt(
            &span,
            batch.iter().map(|c| (c.tenant_id.as_str(), &*c.event)),
        );
    }
    let mut reports = active
        .client
        .send(&messages, started_at)
        .instrument(span.clone())
        .await;
    drop(messages);
    let finished_at = shared.clock.now_ms();
    // A client that answers for fewer deliveries than it was given leaves the rest to retry.
    reports.resize_with(batch.len(), || {
        Report::failed(
            crate::destinations::ErrorKind::Io,
            "the destination gave no outcome for this delivery",
            Duration::ZERO,
        )
    });
    let mut done = Done {
        keys: batch.iter().map(|c| c.key).collect(),
        tenant_id: stream.tenant_id.clone(),
        stream_id: stream.id.clone(),
        retry_at: None,
        feedback: Feedback::Neutral,
        delivered_any: false,
        not_sent: Vec::new(),
    };
    for (i, (claimed, report)) in batch.into_iter().zip(reports).enumerate() {
        if report.outcome == Outcome::NotSent {
            done.not_sent.push((claimed.key, claimed.lease));
            continue;
        }
        let attempt_number = claimed.attempts + 1;
        let (status, next_attempt_at) = retry::next_step(
            &stream.retry_policy,
            attempt_number,
            &report.outcome,
            finished_at,
            retry::jitter_unit(),
        );
        log_attempt(&claimed, attempt_number, &report, status);
        if exported && i == 0 {
            record_outcome(&span, &report, status);
        }
        active.metrics.attempted(status, report.duration);
        if let Some(at) = next_attempt_at {
            done.retry_at = Some(done.retry_at.map_or(at, |due: Millis| due.min(at)));
        }
        let (refused, disable_stream) = match report.outcome {
            Outcome::GiveUp => (true, None),
            Outcome::DisableStream { reason } => (false, Some(reason)),
            Outcome::Delivered => {
                done.feedback = done.feedback.max(Feedback::Succeeded);
                done.delivered_any = true;
                (false, None)
            }
            // Given back above, never recorded.
            Outcome::NotSent => (false, None),
            Outcome::Retry { .. } => {
                let unreachable = report.error.as_ref().is_some_and(|e| {
                    matches!(
                        e.kind,
                        ErrorKind::Timeout | ErrorKind::Connect | ErrorKind::Dns | ErrorKind::Tls
                    )
                });
                let feedback = if unreachable {
                    Feedback::Unreachable
                } else {
                    Feedback::Failed
                };
                done.feedback = done.feedback.max(feedback);
                (false, None)
            }
        };
        shared.recorder.record(AttemptRecord {
            key: claimed.key,
            lease: claimed.lease,
            tenant_id: claimed.tenant_id,
            stream_id: claimed.stream_id,
            delivery_id: claimed.id,
            event_id: claimed.event.id.clone(),
            event_type: claimed.event.event_type.clone(),
            attempt_number,
            attempted_at: started_at,
            duration_ms: report.duration.as_millis() as i64,
            response_status: report.response_status,
            response_body: report.response_body,
            error_kind: report.error.as_ref().map(|e| e.kind.as_str()),
            error_message: report.error.map(|e| e.message),
            detail: report
                .detail
                .map(|d| serde_json::Value::Object(d).to_string()),
            status,
            next_attempt_at,
            refused,
            disable_stream,
            max_consecutive_failures: stream.max_consecutive_failures,
            disable_after_failing_seconds: stream.disable_after_failing_seconds,
        });
    }
    done
}

/// What became of an exported attempt's (first) delivery, on its span.
fn record_outcome(span: &tracing::Span, report: &Report, status: crate::store::DeliveryStatus) {
    span.record("status", status.as_str());
    if let Some(code) = report.response_status {
        // As a signed integer: an unsigned one is exported as text.
        span.record("http.response.status_code", i64::from(code));
    }
    if report.outcome != Outcome::Delivered {
        // The span's error status, with the reason.
        let description = match (&report.error, report.response_status) {
            (Some(error), _) => error.message.clone(),
            (None, Some(code)) => format!("answered {code}"),
            (None, None) => "failed".to_string(),
        };
        span.record("otel.status_description", description.as_str());
    }
}

fn log_attempt(
    claimed: &Claimed,
    attempt: u32,
    report: &Report,
    status: crate::store::DeliveryStatus,
) {
    let error = report.error.as_ref().map(|e| e.message.as_str());
    if report.outcome == Outcome::Delivered {
        tracing::debug!(delivery = %claimed.id, stream = %claimed.stream_id, attempt, "delivered");
    } else {
        tracing::info!(
            delivery = %claimed.id,
            stream = %claimed.stream_id,
            attempt,
            response_status = report.response_status,
            error,
            next = status.as_str(),
            "attempt failed"
        );
    }
}
