//! Fair sharing of the dispatcher's request slots: the one place per-stream and per-tenant
//! limits live.
//!
//! - **Across tenants, then across a tenant's streams: round-robin.** When slots are free,
//!   tenants with work waiting take turns, one request per turn, and within a tenant its
//!   streams take turns. A tenant, or a stream, uses idle capacity freely.
//! - **A reserve for the others.** Once no more than an eighth of the slots are free, a
//!   request may start only for a tenant holding less than an even share among the tenants
//!   with work plus one more (the next to arrive), or, from half the reserve, for a stream of
//!   its tenant that holds none yet. A newcomer tenant holds nothing, so it takes a reserved
//!   slot at once rather than waiting for another's request to end (a dead endpoint's: a
//!   whole timeout).
//! - **An adaptive limit per stream (AIMD).** A stream starts with a few concurrent requests
//!   and gains one each time as many of its requests succeed, while it uses all it may run,
//!   as it may run at once. A timeout or a failed connection halves the limit on the spot,
//!   down to one, so a hung endpoint soon holds a single slot for the length of its timeout;
//!   other failures (a 5xx, throttling) halve it at most once per window of requests, so one
//!   bad moment does not cost a busy stream its concurrency.
//! - **A circuit breaker per stream.** After [`OPEN_AFTER`] failed requests in a row the
//!   stream's circuit opens: its backlog stays in the store, untouched, and a single delivery
//!   is sent as a probe once a wait has passed (5 s, doubling after each failed probe, up to a
//!   minute). Any answer that is not a failure closes the circuit and the backlog resumes in
//!   due order. A delivery's attempts count only when it is sent, so an endpoint that is down
//!   costs a probe a minute, not every pending delivery's retry budget.
//!
//! Later per-stream rate limits and concurrency settings plug in here: [`Limit`] and
//! [`Circuit`] for a stream, `Fairness::may_start` for the shares.

use std::collections::{HashMap, VecDeque};

use crate::clock::Millis;

/// Concurrent requests a stream starts with, before it has shown how much it takes.
const INITIAL_LIMIT: usize = 4;

/// A stream's adaptive concurrency limit: additive increase, multiplicative decrease.
#[derive(Debug, Clone)]
pub struct Limit {
    current: usize,
    max: usize,
    /// Successes at full use since the last increase.
    credit: usize,
    /// Requests to finish before another soft failure may halve the limit again.
    cooldown: usize,
}

/// How a request went, for its stream's limit. Ordered from least to most telling, so a
/// request of several deliveries reports the greatest of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feedback {
    /// Says nothing about the endpoint's capacity (a permanent refusal).
    Neutral,
    Succeeded,
    /// A 5xx, throttling, a refused entry: the endpoint answered, but could not take it.
    Failed,
    /// A timeout or a failed connection: the endpoint may be gone.
    Unreachable,
}

impl Limit {
    pub fn new(max: usize) -> Limit {
        Limit {
            current: INITIAL_LIMIT.min(max).max(1),
            max: max.max(1),
            credit: 0,
            cooldown: 0,
        }
    }

    /// How many requests the stream may have in flight now.
    pub fn get(&self) -> usize {
        self.current
    }

    /// A request finished with `feedback`, while the stream had `in_flight` requests running
    /// (this one included).
    pub fn observe(&mut self, feedback: Feedback, in_flight: usize) {
        self.cooldown = self.cooldown.saturating_sub(1);
        match feedback {
            // Only a stream that uses all it may run has shown it could take more.
            Feedback::Succeeded if in_flight >= self.current => {
                self.credit += 1;
                if self.credit >= self.current {
                    self.credit = 0;
                    self.current = (self.current + 1).min(self.max);
                }
            }
            Feedback::Succeeded | Feedback::Neutral => {}
            Feedback::Unreachable => self.halve(),
            Feedback::Failed if self.cooldown == 0 => {
                self.halve();
                // The requests already running were sent under the old limit.
                self.cooldown = in_flight;
            }
            Feedback::Failed => {}
        }
    }

    fn halve(&mut self) {
        self.credit = 0;
        self.current = (self.current / 2).max(1);
    }
}

/// Failed requests in a row that open a stream's circuit.
pub const OPEN_AFTER: u32 = 10;
/// The wait before the first probe of an open circuit; doubled after each failed probe.
const FIRST_PROBE_WAIT_MS: Millis = 5_000;
/// The longest wait between probes.
const MAX_PROBE_WAIT_MS: Millis = 60_000;

/// A stream's circuit breaker: whether its endpoint is taken to be down, and when to probe it.
#[derive(Debug, Clone)]
pub struct Circuit {
    /// Failed requests in a row.
    failures: u32,
    state: CircuitState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CircuitState {
    Closed,
    /// Nothing is sent until `probe_at`; then one request of one delivery.
    Open {
        probe_at: Millis,
        wait: Millis,
    },
    /// The probe is in flight.
    Probing {
        wait: Millis,
    },
}

/// A change of a circuit's state that the dispatcher acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitChange {
    /// Sending stops: what the stream holds queued goes back to the store.
    Opened { probe_in_ms: Millis },
    /// A probe failed; the next is due after a longer wait.
    StillOpen { probe_in_ms: Millis },
    /// The endpoint answers again: the backlog resumes.
    Closed,
}

impl Default for Circuit {
    fn default() -> Self {
        Circuit {
            failures: 0,
            state: CircuitState::Closed,
        }
    }
}

impl Circuit {
    pub fn is_closed(&self) -> bool {
        self.state == CircuitState::Closed
    }

    /// Requests the stream may have in flight at `now`, given its adaptive `limit`: all of it
    /// while closed, the one probe once an open circuit's wait is over, none otherwise.
    pub fn allowed(&self, limit: usize, now: Millis) -> usize {
        match self.state {
            CircuitState::Closed => limit,
            CircuitState::Open { probe_at, .. } if now >= probe_at => 1,
            CircuitState::Open { .. } | CircuitState::Probing { .. } => 0,
        }
    }

    /// Deliveries one request may carry: a probe carries one.
    pub fn batch(&self, max_batch: usize) -> usize {
        if self.is_closed() { max_batch } else { 1 }
    }

    /// When an open circuit next lets a request start; `None` while closed or probing.
    pub fn probe_at(&self) -> Option<Millis> {
        match self.state {
            CircuitState::Open { probe_at, .. } => Some(probe_at),
            _ => None,
        }
    }

    /// A request started: with the circuit open, it is the probe.
    pub fn started(&mut self) {
        if let CircuitState::Open { wait, .. } = self.state {
            self.state = CircuitState::Probing { wait };
        }
    }

    /// A request finished with `feedback` at `now`.
    pub fn observe(&mut self, feedback: Feedback, now: Millis) -> Option<CircuitChange> {
        let failed = matches!(feedback, Feedback::Failed | Feedback::Unreachable);
        if !failed {
            // Any answer that is not a failure, a refusal included, shows the endpoint is up.
            self.failures = 0;
            let was_closed = self.is_closed();
            self.state = CircuitState::Closed;
            return (!was_closed).then_some(CircuitChange::Closed);
        }
        self.failures = self.failures.saturating_add(1);
        match self.state {
            CircuitState::Closed if self.failures >= OPEN_AFTER => {
                self.state = CircuitState::Open {
                    probe_at: now + FIRST_PROBE_WAIT_MS,
                    wait: FIRST_PROBE_WAIT_MS,
                };
                Some(CircuitChange::Opened {
                    probe_in_ms: FIRST_PROBE_WAIT_MS,
                })
            }
            CircuitState::Probing { wait } => {
                let wait = (wait * 2).min(MAX_PROBE_WAIT_MS);
                self.state = CircuitState::Open {
                    probe_at: now + wait,
                    wait,
                };
                Some(CircuitChange::StillOpen { probe_in_ms: wait })
            }
            // Requests sent before the circuit opened finish failing: nothing new.
            CircuitState::Closed | CircuitState::Open { .. } => None,
        }
    }
}

/// Whether a stream can start a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// It has nothing queued, is at its limit, or is going away: it leaves the turn order
    /// until [`Fairness::mark_ready`] brings it back.
    NotNow,
}

#[derive(Debug, Default)]
struct Tenant {
    in_flight: usize,
    /// Streams with work waiting, in turn order.
    turns: VecDeque<String>,
}

/// A stream's slots, and whether it is in its tenant's turns.
#[derive(Debug, Default)]
struct StreamState {
    in_flight: usize,
    waiting: bool,
}

impl Tenant {
    fn active(&self) -> bool {
        self.in_flight > 0 || !self.turns.is_empty()
    }
}

/// The turn order of tenants and streams, and the slots each tenant holds.
#[derive(Debug)]
pub struct Fairness {
    max_in_flight: usize,
    in_flight: usize,
    tenants: HashMap<String, Tenant>,
    /// Tenants with streams waiting, in turn order.
    turns: VecDeque<String>,
    /// Tenants holding slots or waiting for one.
    active: usize,
    streams: HashMap<String, StreamState>,
}

impl Fairness {
    pub fn new(max_in_flight: usize) -> Fairness {
        Fairness {
            max_in_flight: max_in_flight.max(1),
            in_flight: 0,
            tenants: HashMap::new(),
            turns: VecDeque::new(),
            active: 0,
            streams: HashMap::new(),
        }
    }

    /// Free slots at or below which tenants and streams keep to their shares; none in a pool
    /// of fewer than eight slots, where it would idle a large part of it.
    fn reserve(&self) -> usize {
        self.max_in_flight / 8
    }

    /// Whether `stream` of `tenant` may start one more request now.
    fn may_start(&self, tenant: &Tenant, stream: &str) -> bool {
        if self.in_flight >= self.max_in_flight {
            return false;
        }
        if self.max_in_flight - self.in_flight > self.reserve() {
            return true;
        }
        // A tenant below an even share (a newcomer holds nothing) may start one.
        if tenant.in_flight < (self.max_in_flight / (self.active + 1)).max(1) {
            return true;
        }
        // So may a stream holding nothing, from half the reserve: the other half stays for
        // the next tenant.
        let idle = self.streams.get(stream).is_none_or(|s| s.in_flight == 0);
        idle && tenant.in_flight < self.max_in_flight - self.reserve() / 2
    }

    /// Applies `change` to a stream's state, forgetting a stream with nothing left.
    fn with_stream(&mut self, id: &str, change: impl FnOnce(&mut StreamState)) {
        let state = match self.streams.get_mut(id) {
            Some(state) => state,
            None => self.streams.entry(id.to_string()).or_default(),
        };
        change(state);
        if state.in_flight == 0 && !state.waiting {
            self.streams.remove(id);
        }
    }

    /// Applies `change` to a tenant, keeping the count of active tenants.
    fn with_tenant<T>(&mut self, id: &str, change: impl FnOnce(&mut Tenant) -> T) -> T {
        let tenant = match self.tenants.get_mut(id) {
            Some(tenant) => tenant,
            None => self.tenants.entry(id.to_string()).or_default(),
        };
        let before = tenant.active();
        let result = change(tenant);
        let after = tenant.active();
        match (before, after) {
            (false, true) => self.active += 1,
            (true, false) => self.active -= 1,
            _ => {}
        }
        if !after {
            self.tenants.remove(id);
        }
        result
    }

    /// `stream` of `tenant` has work to start (new work queued, or a slot of its own freed).
    pub fn mark_ready(&mut self, tenant: &str, stream: &str) {
        if self.streams.get(stream).is_some_and(|s| s.waiting) {
            return;
        }
        self.with_stream(stream, |s| s.waiting = true);
        let newly = self.with_tenant(tenant, |t| {
            t.turns.push_back(stream.to_string());
            t.turns.len() == 1
        });
        if newly {
            self.turns.push_back(tenant.to_string());
        }
    }

    /// The next stream to start a request for, taking turns across tenants, then across each
    /// tenant's streams; `None` when none may start one now. `readiness` says whether a
    /// stream has a request to start.
    pub fn next(
        &mut self,
        mut readiness: impl FnMut(&str) -> Readiness,
    ) -> Option<(String, String)> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        for _ in 0..self.turns.len() {
            let tenant_id = self.turns.pop_front()?;
            let mut found = None;
            let mut dropped = Vec::new();
            if let Some(tenant) = self.tenants.get(&tenant_id) {
                for (i, stream) in tenant.turns.iter().enumerate() {
                    if readiness(stream) == Readiness::NotNow {
                        dropped.push(i);
                    } else if self.may_start(tenant, stream) {
                        found = Some(i);
                        break;
                    }
                }
            }
            let (picked, left) = self.with_tenant(&tenant_id, |t| {
                // Streams that cannot start leave the turns until marked ready again; the one
                // picked goes to the back of its tenant's turns. (Every dropped index is
                // below the picked one, so removing that first shifts none of them.)
                let picked = found.and_then(|i| t.turns.remove(i));
                let left: Vec<String> = dropped
                    .iter()
                    .rev()
                    .filter_map(|&i| t.turns.remove(i))
                    .collect();
                if let Some(stream) = &picked {
                    t.turns.push_back(stream.clone());
                }
                (picked, left)
            });
            for stream in left {
                self.with_stream(&stream, |s| s.waiting = false);
            }
            let has_turns = self
                .tenants
                .get(&tenant_id)
                .is_some_and(|t| !t.turns.is_empty());
            if has_turns {
                self.turns.push_back(tenant_id.clone());
            }
            if let Some(stream) = picked {
                return Some((tenant_id, stream));
            }
        }
        None
    }

    /// A request of `stream` of `tenant` started.
    pub fn started(&mut self, tenant: &str, stream: &str) {
        self.in_flight += 1;
        self.with_tenant(tenant, |t| t.in_flight += 1);
        self.with_stream(stream, |s| s.in_flight += 1);
    }

    /// A request of `stream` of `tenant` finished.
    pub fn finished(&mut self, tenant: &str, stream: &str) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.with_tenant(tenant, |t| t.in_flight = t.in_flight.saturating_sub(1));
        self.with_stream(stream, |s| s.in_flight = s.in_flight.saturating_sub(1));
    }

    /// Claims' share of a tenant, in requests' worth held (running and queued): while the
    /// dispatcher has room to spare, any; when it runs short, an even share of twice the
    /// slots among the tenants with work plus one more.
    pub fn claim_share(&self, room: usize) -> usize {
        if room > 2 * self.reserve() {
            usize::MAX
        } else {
            (2 * self.max_in_flight / (self.active + 1)).max(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_grows_only_in_full_use_and_halves_on_failure() {
        let mut limit = Limit::new(32);
        assert_eq!(limit.get(), 4);
        for _ in 0..100 {
            limit.observe(Feedback::Succeeded, 1);
        }
        assert_eq!(
            limit.get(),
            4,
            "a stream using one slot of four shows nothing more"
        );
        for _ in 0..4 {
            limit.observe(Feedback::Succeeded, 4);
        }
        assert_eq!(limit.get(), 5);
        limit.observe(Feedback::Unreachable, 5);
        assert_eq!(limit.get(), 2, "a timeout halves at once");
        limit.observe(Feedback::Unreachable, 2);
        limit.observe(Feedback::Unreachable, 1);
        assert_eq!(limit.get(), 1, "never below one");
        for _ in 0..10_000 {
            let at = limit.get();
            limit.observe(Feedback::Succeeded, at);
        }
        assert_eq!(limit.get(), 32, "never above the stream's maximum");
    }

    #[test]
    fn a_burst_of_errors_halves_a_busy_stream_once() {
        let mut limit = Limit::new(32);
        for _ in 0..10_000 {
            let at = limit.get();
            limit.observe(Feedback::Succeeded, at);
        }
        // Thirty-two requests in flight all answer 502.
        for left in (1..=32).rev() {
            limit.observe(Feedback::Failed, left);
        }
        assert_eq!(limit.get(), 16);
        limit.observe(Feedback::Neutral, 16);
        assert_eq!(
            limit.get(),
            16,
            "a permanent refusal says nothing of capacity"
        );
    }

    #[test]
    fn a_circuit_opens_after_a_run_of_failures_and_probes_on_a_growing_wait() {
        let mut circuit = Circuit::default();
        for i in 1..OPEN_AFTER {
            assert_eq!(circuit.observe(Feedback::Failed, i as Millis), None);
        }
        assert_eq!(
            circuit.observe(Feedback::Unreachable, 100),
            Some(CircuitChange::Opened { probe_in_ms: 5_000 })
        );
        assert_eq!(circuit.allowed(8, 100), 0, "nothing is sent while open");
        assert_eq!(
            circuit.observe(Feedback::Failed, 200),
            None,
            "a request sent before it opened"
        );
        assert_eq!(
            circuit.allowed(8, 5_100),
            1,
            "one probe once the wait is over"
        );
        assert_eq!(circuit.batch(10), 1);
        circuit.started();
        assert_eq!(circuit.allowed(8, 5_100), 0, "one probe at a time");
        let mut waits = Vec::new();
        let mut now = 5_100;
        for _ in 0..6 {
            match circuit.observe(Feedback::Failed, now) {
                Some(CircuitChange::StillOpen { probe_in_ms }) => waits.push(probe_in_ms),
                other => panic!("{other:?}"),
            }
            now = circuit.probe_at().unwrap();
            circuit.started();
        }
        assert_eq!(waits, [10_000, 20_000, 40_000, 60_000, 60_000, 60_000]);
        assert_eq!(
            circuit.observe(Feedback::Succeeded, now),
            Some(CircuitChange::Closed)
        );
        assert_eq!(circuit.allowed(8, now), 8);
        assert_eq!(circuit.batch(10), 10);
    }

    #[test]
    fn a_success_or_a_refusal_resets_the_run() {
        for feedback in [Feedback::Succeeded, Feedback::Neutral] {
            let mut circuit = Circuit::default();
            for _ in 0..OPEN_AFTER - 1 {
                assert_eq!(circuit.observe(Feedback::Failed, 10), None);
            }
            assert_eq!(circuit.observe(feedback, 50), None);
            for _ in 0..OPEN_AFTER - 1 {
                assert_eq!(circuit.observe(Feedback::Failed, 60), None);
            }
            assert!(circuit.is_closed(), "{feedback:?} started the count again");
            assert!(circuit.observe(Feedback::Failed, 70).is_some());
        }
    }

    fn start_all(fair: &mut Fairness) -> Vec<String> {
        let mut started = Vec::new();
        while let Some((tenant, stream)) = fair.next(|_| Readiness::Ready) {
            fair.started(&tenant, &stream);
            started.push(stream);
        }
        started
    }

    #[test]
    fn tenants_take_turns_then_streams_within_a_tenant() {
        let mut fair = Fairness::new(100);
        fair.mark_ready("a", "a1");
        fair.mark_ready("a", "a2");
        fair.mark_ready("b", "b1");
        let mut order = Vec::new();
        for _ in 0..6 {
            let (tenant, stream) = fair.next(|_| Readiness::Ready).unwrap();
            fair.started(&tenant, &stream);
            order.push(stream);
        }
        assert_eq!(order, ["a1", "b1", "a2", "b1", "a1", "b1"]);
    }

    #[test]
    fn a_newcomer_finds_a_reserved_slot_while_a_busy_tenant_holds_the_rest() {
        let mut fair = Fairness::new(64);
        fair.mark_ready("busy", "b1");
        fair.mark_ready("busy", "b2");
        let held = start_all(&mut fair).len();
        assert!(
            held < 64,
            "a busy tenant keeps to its share once slots run short"
        );
        assert!(
            held >= 64 - 64 / 8,
            "but uses idle capacity up to the reserve: {held}"
        );
        fair.mark_ready("newcomer", "n");
        let (tenant, stream) = fair.next(|_| Readiness::Ready).unwrap();
        assert_eq!((tenant.as_str(), stream.as_str()), ("newcomer", "n"));
    }

    #[test]
    fn a_tenants_idle_stream_is_not_held_up_by_its_busy_ones() {
        let mut fair = Fairness::new(64);
        for i in 0..14 {
            fair.mark_ready("only", &format!("hung{i}"));
        }
        let held = start_all(&mut fair).len();
        assert!(held < 64, "{held}");
        fair.mark_ready("only", "healthy");
        let picked = fair.next(|s| {
            if s == "healthy" {
                Readiness::Ready
            } else {
                Readiness::NotNow
            }
        });
        assert_eq!(picked, Some(("only".into(), "healthy".into())));
    }

    #[test]
    fn every_slot_can_be_used() {
        let mut fair = Fairness::new(2);
        fair.mark_ready("a", "a1");
        fair.mark_ready("b", "b1");
        assert_eq!(start_all(&mut fair).len(), 2);
        let mut lone = Fairness::new(1);
        lone.mark_ready("a", "a1");
        assert_eq!(start_all(&mut lone).len(), 1);
        let mut small = Fairness::new(2);
        small.mark_ready("a", "a1");
        assert_eq!(
            start_all(&mut small).len(),
            2,
            "a small pool keeps no reserve"
        );
    }

    #[test]
    fn streams_that_cannot_start_leave_the_turns_until_marked_ready() {
        let mut fair = Fairness::new(10);
        fair.mark_ready("a", "a1");
        assert_eq!(fair.next(|_| Readiness::NotNow), None);
        assert_eq!(fair.active, 0, "a tenant with nothing to do is not active");
        assert!(fair.streams.is_empty());
        fair.mark_ready("a", "a1");
        assert_eq!(
            fair.next(|_| Readiness::Ready),
            Some(("a".to_string(), "a1".to_string()))
        );
        fair.started("a", "a1");
        fair.finished("a", "a1");
        assert_eq!(fair.in_flight, 0);
    }
}
