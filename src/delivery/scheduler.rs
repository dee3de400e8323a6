//! Fair sharing of the dispatcher's request slots: the one place per-stream and per-tenant
//! limits live.
//!
//! - **Across tenants, then across a tenant's streams: round-robin.** When slots are free,
//!   tenants with work waiting take turns, one request per turn, and within a tenant its
//!   streams take turns (deficit round-robin with a quantum of one request, every request
//!   costing one). A tenant, or a stream, uses idle capacity freely.
//! - **A reserve for the others.** Once fewer than an eighth of the slots are free, a tenant
//!   may start a request only while it holds less than an even share among the tenants with
//!   work plus one more (the next to arrive). A tenant alone can therefore fill at most seven
//!   eighths of the slots, and a tenant that publishes while others hold the rest finds a free
//!   slot at once: its wait for a slot is bounded by nothing but its own turn.
//! - **An adaptive limit per stream (AIMD).** A stream starts with a few concurrent requests,
//!   gains one each time as many of its requests succeed as it may run at once, and halves
//!   its limit on every failed request, down to one: a hung or failing endpoint soon holds a
//!   single slot for the length of its timeout, not `max_in_flight_per_stream`.
//!
//! Later per-stream rate limits and concurrency settings plug in here: [`Limit`] for a
//! stream, [`Fairness::may_start`] for a tenant.

use std::collections::{HashMap, HashSet, VecDeque};

/// Concurrent requests a stream starts with, before it has shown how much it takes.
const INITIAL_LIMIT: usize = 4;

/// A stream's adaptive concurrency limit: additive increase, multiplicative decrease.
#[derive(Debug, Clone)]
pub struct Limit {
    current: usize,
    max: usize,
    /// Successes since the last increase.
    credit: usize,
}

impl Limit {
    pub fn new(max: usize) -> Limit {
        Limit {
            current: INITIAL_LIMIT.min(max).max(1),
            max: max.max(1),
            credit: 0,
        }
    }

    /// How many requests the stream may have in flight now.
    pub fn get(&self) -> usize {
        self.current
    }

    /// A request succeeded: one more slot once a full window of them has.
    pub fn succeeded(&mut self) {
        self.credit += 1;
        if self.credit >= self.current {
            self.credit = 0;
            self.current = (self.current + 1).min(self.max);
        }
    }

    /// A request failed or timed out: half the slots, at least one.
    pub fn failed(&mut self) {
        self.credit = 0;
        self.current = (self.current / 2).max(1);
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
    queued: HashSet<String>,
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
}

impl Fairness {
    pub fn new(max_in_flight: usize) -> Fairness {
        Fairness {
            max_in_flight: max_in_flight.max(1),
            in_flight: 0,
            tenants: HashMap::new(),
            turns: VecDeque::new(),
            active: 0,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Free slots below which tenants keep to their share.
    fn reserve(&self) -> usize {
        (self.max_in_flight / 8).max(1)
    }

    /// Tenants holding slots or waiting for one.
    pub fn active_tenants(&self) -> usize {
        self.active
    }

    /// Whether `tenant` may start one more request now.
    fn may_start(&self, tenant: &Tenant) -> bool {
        if self.in_flight >= self.max_in_flight {
            return false;
        }
        let free = self.max_in_flight - self.in_flight;
        if free > self.reserve() {
            return true;
        }
        let share = (self.max_in_flight / (self.active + 1)).max(1);
        tenant.in_flight < share
    }

    /// Applies `change` to a tenant, keeping the count of active tenants.
    fn with_tenant<T>(&mut self, id: &str, change: impl FnOnce(&mut Tenant) -> T) -> T {
        let tenant = self.tenants.entry(id.to_string()).or_default();
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
        let newly = self.with_tenant(tenant, |t| {
            let was_waiting = !t.turns.is_empty();
            if t.queued.insert(stream.to_string()) {
                t.turns.push_back(stream.to_string());
            }
            !was_waiting && !t.turns.is_empty()
        });
        if newly {
            self.turns.push_back(tenant.to_string());
        }
    }

    /// The next stream to start a request for, taking turns across tenants, then across each
    /// tenant's streams; `None` when no tenant may start one now. `readiness` says whether a
    /// stream can start one.
    pub fn next(
        &mut self,
        mut readiness: impl FnMut(&str) -> Readiness,
    ) -> Option<(String, String)> {
        for _ in 0..self.turns.len() {
            let tenant_id = self.turns.pop_front()?;
            let Some(tenant) = self.tenants.get(&tenant_id) else {
                continue;
            };
            if tenant.turns.is_empty() {
                continue;
            }
            if !self.may_start(tenant) {
                self.turns.push_back(tenant_id);
                continue;
            }
            let found = self.with_tenant(&tenant_id, |t| {
                for _ in 0..t.turns.len() {
                    let stream = t.turns.pop_front()?;
                    if readiness(&stream) == Readiness::Ready {
                        t.turns.push_back(stream.clone());
                        return Some(stream);
                    }
                    t.queued.remove(&stream);
                }
                None
            });
            match found {
                Some(stream) => {
                    self.turns.push_back(tenant_id.clone());
                    return Some((tenant_id, stream));
                }
                // No stream of the tenant can start: it leaves the turns until one is ready.
                None => continue,
            }
        }
        None
    }

    /// A request of `tenant` started.
    pub fn started(&mut self, tenant: &str) {
        self.in_flight += 1;
        self.with_tenant(tenant, |t| t.in_flight += 1);
    }

    /// A request of `tenant` finished.
    pub fn finished(&mut self, tenant: &str) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.with_tenant(tenant, |t| t.in_flight = t.in_flight.saturating_sub(1));
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
    fn the_limit_grows_by_one_a_window_and_halves_on_failure() {
        let mut limit = Limit::new(32);
        assert_eq!(limit.get(), 4);
        for _ in 0..4 {
            limit.succeeded();
        }
        assert_eq!(limit.get(), 5);
        limit.failed();
        assert_eq!(limit.get(), 2);
        limit.failed();
        limit.failed();
        assert_eq!(limit.get(), 1, "never below one");
        for _ in 0..10_000 {
            limit.succeeded();
        }
        assert_eq!(limit.get(), 32, "never above the stream's maximum");
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
            fair.started(&tenant);
            order.push(stream);
        }
        assert_eq!(order, ["a1", "b1", "a2", "b1", "a1", "b1"]);
    }

    #[test]
    fn a_busy_tenant_leaves_a_reserve_for_the_next_one() {
        let mut fair = Fairness::new(64);
        fair.mark_ready("hungry", "h");
        let mut held = 0;
        while let Some((tenant, _)) = fair.next(|_| Readiness::Ready) {
            fair.started(&tenant);
            held += 1;
        }
        assert!(
            held < 64,
            "a lone tenant keeps to its share once slots run short"
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
    fn streams_that_cannot_start_leave_the_turns_until_marked_ready() {
        let mut fair = Fairness::new(10);
        fair.mark_ready("a", "a1");
        assert_eq!(fair.next(|_| Readiness::NotNow), None);
        assert_eq!(
            fair.active_tenants(),
            0,
            "a tenant with nothing to do is not active"
        );
        fair.mark_ready("a", "a1");
        assert_eq!(
            fair.next(|_| Readiness::Ready),
            Some(("a".to_string(), "a1".to_string()))
        );
    }
}
