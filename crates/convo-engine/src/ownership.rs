//! Ownership as a sans-IO state machine (DESIGN.md, "The service and its
//! ownership"; STYLE §14, §17): which of the stream's partitions — and which
//! stream-wide roles (the JSON stream and the webhooks: `feeds`) — this
//! instance should hold, and what to do about it. Like the partition
//! machine it performs no I/O and reads no clock: the driver tells it what
//! the directory shows (`handle_directory`), what a lease operation or a
//! presence probe came to, and the time (`handle_timeout`, in milliseconds of
//! a monotonic clock); it answers with [`Action`]s (`poll`) and when to wake
//! (`poll_timeout`). `serve` drives it with JetStream KV and core NATS; the
//! fault simulator drives several of them over a simulated directory.
//!
//! One policy for every lease it holds:
//! - **Shares** are sticky: each live instance's fair number of partitions,
//!   keeping those it holds, so a death moves only the dead instance's
//!   partitions and a newcomer takes only what it is owed (`shares`); a
//!   role stays with its live holder, a free one is the first live
//!   instance's (by id). An instance takes what is its share once no live
//!   instance holds it, and hands over (drain, then release) what no
//!   longer is.
//! - **Live** means a heartbeat seen within the member TTL and no presence
//!   probe saying its connection is gone. A probe that finds nobody (NATS
//!   answers "no responders" the moment a killed instance's connection
//!   closes) makes its leases free at once: the successor takes them over
//!   the dead holder's revision, without waiting for them to expire. The
//!   fence (`convo_store::fence`), not the lease, is what makes that safe.
//! - **Renewals** go every `renew_every_ms`. A renewal refused because
//!   another instance holds the key halts the resource at once; one that
//!   fails (the KV is electing a leader) changes nothing — the fence
//!   protects the log meanwhile — until `halt_after_ms` without a renewal,
//!   when the instance stops deciding (it is cut off). A key gone while held
//!   (it expired during a long election) is created again by its holder.
//! - **Deposed** (an append found the fence moved): halt at once.
//! - **Confirmed**: a hold is good until its latest successful take or
//!   renewal was asked plus the member TTL, less a renewal period
//!   (`confirmed`); past that the driver answers nothing it would not
//!   write (refusals become `unavailable`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What an instance may hold: a partition, or a stream-wide role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Partition(usize),
    Role(String),
}

impl Resource {
    /// Its lease's key in the directory (`partition.3`, `role.feeds`).
    pub fn key(&self) -> String {
        match self {
            Resource::Partition(n) => format!("partition.{n}"),
            Resource::Role(name) => format!("role.{name}"),
        }
    }

    /// The resource a lease key names.
    pub fn from_key(key: &str) -> Option<Self> {
        if let Some(n) = key.strip_prefix("partition.") {
            return n.parse().ok().map(Resource::Partition);
        }
        key.strip_prefix("role.").map(|name| Resource::Role(name.to_owned()))
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Partition(n) => write!(f, "partition {n}"),
            Resource::Role(name) => write!(f, "the {name} role"),
        }
    }
}

/// The machine's settings.
#[derive(Debug, Clone)]
pub struct OwnershipConfig {
    pub instance: String,
    pub partitions: usize,
    /// The stream-wide roles this instance may play (`feeds`).
    pub roles: Vec<String>,
    /// How often leases are renewed and the heartbeat written.
    pub renew_every_ms: u64,
    /// A heartbeat older than this is a dead instance's.
    pub member_ttl_ms: u64,
    /// How often the other instances' presence is probed.
    pub probe_every_ms: u64,
    /// How long a held resource goes without a renewal before the instance
    /// stops deciding for it (cut off from the directory).
    pub halt_after_ms: u64,
    /// How long after a failed take (or a deposition) it is tried again.
    pub retry_after_ms: u64,
}

impl OwnershipConfig {
    /// The service's settings for `instance` sharing `partitions`.
    pub fn serve(instance: &str, partitions: usize, roles: Vec<String>) -> Self {
        Self {
            instance: instance.to_owned(),
            partitions,
            roles,
            renew_every_ms: RENEW_EVERY_MS,
            member_ttl_ms: MEMBER_TTL_MS,
            probe_every_ms: PROBE_EVERY_MS,
            halt_after_ms: HALT_AFTER_MS,
            retry_after_ms: RETRY_AFTER_MS,
        }
    }
}

/// How often leases are renewed and heartbeats written by default.
pub const RENEW_EVERY_MS: u64 = 1_000;
/// A heartbeat this old is a dead instance's (the directory's keys expire at the same age).
pub const MEMBER_TTL_MS: u64 = 10_000;
/// How often other instances' presence is probed by default.
pub const PROBE_EVERY_MS: u64 = 250;
/// Without a renewal this long, an instance stops deciding for a resource.
pub const HALT_AFTER_MS: u64 = 30_000;
/// How long after a failed take it is tried again by default.
pub const RETRY_AFTER_MS: u64 = 1_000;

/// What the directory shows: the instances' heartbeats and the leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryView {
    /// Each instance's id and when (ms, the driver's clock) its heartbeat was last seen written.
    pub members: BTreeMap<String, u64>,
    /// Each lease's holder and revision.
    pub leases: BTreeMap<Resource, (String, u64)>,
}

/// Why a take did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeError {
    /// Another instance holds it (or took it meanwhile).
    Held { holder: String },
    /// The directory or the log could not be reached.
    Unavailable,
}

/// Why a renewal did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewError {
    /// The key is another instance's now (`Some`), or gone (`None`: it expired).
    Lost {
        holder: Option<String>,
    },
    Unavailable,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this instance's heartbeat, naming what it holds.
    Heartbeat { holds: Vec<Resource> },
    /// Take the lease (over `over`'s revision when it is a dead holder's),
    /// then — a partition — its fence; answer with `handle_taken`.
    Take { resource: Resource, over: Option<(String, u64)> },
    /// Start serving it (recovery, subscriptions); it serves until drained or halted.
    Start { resource: Resource },
    /// Renew the lease at `revision`; answer with `handle_renewed`.
    Renew { resource: Resource, revision: u64 },
    /// Stop taking requests for it, finish those in hand, write its
    /// snapshot; answer with `handle_stopped`.
    Drain { resource: Resource },
    /// Stop deciding for it at once (another holds it, or this instance is
    /// cut off); answer with `handle_stopped`.
    Halt { resource: Resource, why: String },
    /// Give the lease up; answer with `handle_released`.
    Release { resource: Resource, revision: u64 },
    /// Ask whether `instance`'s connection is alive; answer with `handle_probed`.
    Probe { instance: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Serving,
    Draining,
    Halting,
}

#[derive(Debug, Clone)]
struct Held {
    state: State,
    revision: u64,
    renewed_at: u64,
    /// Until when no other instance can have taken it (see `confirmed`).
    valid_until: u64,
    /// A renewal is under way.
    renewing: bool,
}

/// One instance's view of who holds what, and what it does about it.
#[derive(Debug)]
pub struct Ownership {
    config: OwnershipConfig,
    now: u64,
    directory: DirectoryView,
    /// Instances a probe found gone, until their heartbeat is seen again after that.
    gone: BTreeMap<String, u64>,
    held: BTreeMap<Resource, Held>,
    taking: BTreeSet<Resource>,
    releasing: BTreeSet<Resource>,
    probing: BTreeSet<String>,
    retry_at: BTreeMap<Resource, u64>,
    /// When the latest take or renewal of each resource was asked.
    asked: BTreeMap<Resource, u64>,
    next_renew: u64,
    next_probe: u64,
    /// When this machine first heard of the directory or the clock.
    watching_since: Option<u64>,
    stopping: bool,
    outbox: VecDeque<Action>,
}

impl Ownership {
    pub fn new(config: OwnershipConfig) -> Self {
        Self {
            config,
            now: 0,
            directory: DirectoryView::default(),
            gone: BTreeMap::new(),
            held: BTreeMap::new(),
            taking: BTreeSet::new(),
            releasing: BTreeSet::new(),
            probing: BTreeSet::new(),
            retry_at: BTreeMap::new(),
            asked: BTreeMap::new(),
            next_renew: 0,
            next_probe: 0,
            watching_since: None,
            stopping: false,
            outbox: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &OwnershipConfig {
        &self.config
    }

    /// The instances alive as this one sees them (itself included), by id.
    /// A lease holder with no heartbeat in view counts as alive until this
    /// machine has watched for a member TTL (its heartbeat may simply not
    /// have been seen yet: a newcomer's first view can show a lease before
    /// its holder's heartbeat), unless a probe finds it gone.
    pub fn live(&self) -> Vec<String> {
        let ttl = self.config.member_ttl_ms;
        let mut live: Vec<String> = self
            .directory
            .members
            .iter()
            .filter(|(id, seen)| self.now.saturating_sub(**seen) < ttl && !self.is_gone(id, **seen))
            .map(|(id, _)| id.clone())
            .collect();
        if self.watching_since.is_some_and(|since| self.now.saturating_sub(since) < ttl) {
            for holder in self.unseen_holders() {
                if !self.gone.contains_key(holder) && !live.iter().any(|id| id == holder) {
                    live.push(holder.clone());
                }
            }
        }
        if !self.stopping && !live.contains(&self.config.instance) {
            live.push(self.config.instance.clone());
        }
        live.sort();
        live
    }

    /// Lease holders (other than this instance) whose heartbeat is not in view.
    fn unseen_holders(&self) -> BTreeSet<&String> {
        self.directory
            .leases
            .values()
            .map(|(holder, _)| holder)
            .filter(|h| **h != self.config.instance && !self.directory.members.contains_key(*h))
            .collect()
    }

    fn is_gone(&self, id: &str, seen: u64) -> bool {
        self.gone.get(id).is_some_and(|found| seen <= *found)
    }

    /// Whether `resource` is this instance's share of the live instances.
    fn mine(&self, resource: &Resource, live: &[String]) -> bool {
        if self.stopping {
            return false;
        }
        let me = self.config.instance.as_str();
        let Some(place) = live.iter().position(|id| id == me) else { return false };
        match resource {
            Resource::Partition(n) => self.shares(live).get(n).is_some_and(|owner| *owner == me),
            // A role stays with its live holder; a free one is the first live instance's.
            Resource::Role(name) => {
                self.config.roles.contains(name)
                    && match self.directory.leases.get(resource) {
                        Some((holder, _)) if live.contains(holder) => holder == me,
                        _ => place == 0,
                    }
            }
        }
    }

    /// Who should serve each partition (sticky shares): every live instance
    /// gets `partitions / live` of them, the first `partitions mod live` (most
    /// held first, then by id) one more; an instance keeps the lowest-numbered
    /// of those it holds up to its share, and the rest — a dead instance's, a
    /// share's excess — go in order to the instances (by id) below their
    /// share. So a death moves only the dead instance's partitions and a
    /// newcomer only what it is owed. Every instance computes the same from
    /// the same view (its own serving partitions count as held).
    fn shares<'a>(&'a self, live: &'a [String]) -> BTreeMap<usize, &'a str> {
        let mut holding: BTreeMap<&str, Vec<usize>> = live.iter().map(|id| (id.as_str(), Vec::new())).collect();
        for n in 0..self.config.partitions {
            let resource = Resource::Partition(n);
            let serving = self.held.get(&resource).is_some_and(|h| h.state == State::Serving);
            let holder = match self.directory.leases.get(&resource) {
                _ if serving => Some(self.config.instance.as_str()),
                lease => lease.map(|(holder, _)| holder.as_str()),
            };
            if let Some(list) = holder.and_then(|h| holding.get_mut(h)) {
                list.push(n);
            }
        }
        let (base, extra) = (self.config.partitions / live.len(), self.config.partitions % live.len());
        let mut order: Vec<&str> = holding.keys().copied().collect();
        order.sort_by_key(|id| (std::cmp::Reverse(holding[id].len()), *id));
        let cap: BTreeMap<&str, usize> =
            order.iter().enumerate().map(|(place, id)| (*id, base + usize::from(place < extra))).collect();
        let mut shares = BTreeMap::new();
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for (id, held) in &holding {
            for n in held.iter().take(cap[id]) {
                shares.insert(*n, *id);
            }
            count.insert(id, held.len().min(cap[id]));
        }
        for n in 0..self.config.partitions {
            if shares.contains_key(&n) {
                continue;
            }
            if let Some(id) = live.iter().map(String::as_str).find(|id| count[id] < cap[id]) {
                shares.insert(n, id);
                *count.get_mut(id).expect("a live instance") += 1;
            }
        }
        shares
    }

    /// Everything there is to hold.
    fn resources(&self) -> Vec<Resource> {
        let mut all: Vec<Resource> = (0..self.config.partitions).map(Resource::Partition).collect();
        all.extend(self.config.roles.iter().cloned().map(Resource::Role));
        all
    }

    /// What this instance holds now (serving, draining or halting).
    pub fn held(&self) -> impl Iterator<Item = &Resource> {
        self.held.keys()
    }

    /// Whether this instance serves `resource` now.
    pub fn serves(&self, resource: &Resource) -> bool {
        self.held.get(resource).is_some_and(|h| h.state == State::Serving)
    }

    /// The partitions nobody live serves as this instance sees it: those of
    /// its own share it does not serve yet (counting itself live from the
    /// start, so a newcomer is not ready before it has taken its share), and
    /// those whose lease no live instance holds (readiness names them).
    pub fn unowned_partitions(&self) -> Vec<usize> {
        let mut live = self.live();
        // Before its own heartbeat is in the directory the others do not count
        // this instance yet: the share it is about to take is changing hands.
        if !live.contains(&self.config.instance) {
            live.push(self.config.instance.clone());
        }
        (0..self.config.partitions)
            .filter(|n| {
                let resource = Resource::Partition(*n);
                if self.mine(&resource, &live) {
                    return !self.serves(&resource);
                }
                match self.directory.leases.get(&resource) {
                    Some((holder, _)) => !live.contains(holder) || *holder == self.config.instance,
                    None => true,
                }
            })
            .collect()
    }

    /// Whether this instance's hold on `resource` is confirmed at `now`: no
    /// other instance can have taken it yet. A successor takes a lease only
    /// once its holder's heartbeat is `member_ttl_ms` old (or its connection
    /// is gone) or the key expired, so a hold is good until the latest
    /// successful take or renewal was *asked* plus that, less one renewal
    /// period (the heartbeat written with it may have failed). Past it — an
    /// instance resumed from a pause, renewals failing — it may still
    /// commit (the fence decides), but an answer that writes nothing (a
    /// refusal) would come from a state that may be stale: the driver says
    /// `unavailable` instead, and the client retries.
    pub fn confirmed(&self, resource: &Resource, now: u64) -> bool {
        self.held.get(resource).is_some_and(|h| h.state == State::Serving && now < h.valid_until)
    }

    /// Until when (ms) the hold on `resource` is confirmed (0: not held).
    pub fn confirmed_until(&self, resource: &Resource) -> u64 {
        self.held.get(resource).filter(|h| h.state == State::Serving).map_or(0, |h| h.valid_until)
    }

    fn valid_from_asked(&self, resource: &Resource) -> u64 {
        let asked = self.asked.get(resource).copied().unwrap_or(self.now);
        asked + self.config.member_ttl_ms.saturating_sub(self.config.renew_every_ms)
    }

    /// Whether a graceful stop is over: nothing held, nothing under way.
    pub fn is_stopped(&self) -> bool {
        self.stopping && self.held.is_empty() && self.taking.is_empty() && self.releasing.is_empty()
    }

    /// The next action to perform.
    pub fn poll(&mut self) -> Option<Action> {
        self.outbox.pop_front()
    }

    /// When the machine wants to be woken (ms).
    pub fn poll_timeout(&self) -> u64 {
        self.next_renew.min(self.next_probe)
    }

    /// The clock: renewals, heartbeats, probes, the halt deadline, then what to take or give up.
    pub fn handle_timeout(&mut self, now: u64) {
        self.now = self.now.max(now);
        self.watching_since.get_or_insert(now);
        let now = self.now;
        if now >= self.next_renew && !self.stopping {
            self.next_renew = now + self.config.renew_every_ms;
            for (resource, held) in &mut self.held {
                if held.state != State::Halting && !held.renewing {
                    held.renewing = true;
                    self.asked.insert(resource.clone(), now);
                    self.outbox.push_back(Action::Renew { resource: resource.clone(), revision: held.revision });
                }
            }
            let holds = self.held.keys().cloned().collect();
            self.outbox.push_back(Action::Heartbeat { holds });
        }
        // Cut off from the directory too long: someone else may decide now.
        let halt_after = self.config.halt_after_ms;
        let cut_off: Vec<Resource> = self
            .held
            .iter()
            .filter(|(_, h)| h.state == State::Serving && now.saturating_sub(h.renewed_at) >= halt_after)
            .map(|(r, _)| r.clone())
            .collect();
        for resource in cut_off {
            self.halt(resource, format!("its lease could not be renewed for {} s", halt_after / 1000));
        }
        if now >= self.next_probe {
            self.next_probe = now + self.config.probe_every_ms;
            // Every other member, and every lease holder not seen heartbeating (gone, or not seen yet).
            let mut others: BTreeSet<String> =
                self.directory.members.keys().filter(|id| **id != self.config.instance).cloned().collect();
            others.extend(self.unseen_holders().into_iter().cloned());
            for instance in others {
                if self.probing.insert(instance.clone()) {
                    self.outbox.push_back(Action::Probe { instance });
                }
            }
        }
        self.plan();
    }

    /// What the directory shows now.
    pub fn handle_directory(&mut self, view: DirectoryView, now: u64) {
        self.now = self.now.max(now);
        self.watching_since.get_or_insert(now);
        self.directory = view;
        self.plan();
    }

    /// A presence probe's answer: `Some(false)` the instance's connection is
    /// gone for sure; `Some(true)` it answered; `None` no answer in time.
    pub fn handle_probed(&mut self, instance: &str, alive: Option<bool>) {
        self.probing.remove(instance);
        match alive {
            Some(false) => {
                let seen = self.directory.members.get(instance).copied().unwrap_or(0);
                self.gone.insert(instance.to_owned(), seen);
                self.plan();
            }
            Some(true) => {
                self.gone.remove(instance);
            }
            None => {}
        }
    }

    /// What a take came to.
    pub fn handle_taken(&mut self, resource: Resource, result: Result<u64, TakeError>) {
        self.taking.remove(&resource);
        match result {
            Ok(revision) if self.held.contains_key(&resource) => {
                // Our own key created again after it expired: we still serve it.
                let valid_until = self.valid_from_asked(&resource);
                if let Some(held) = self.held.get_mut(&resource) {
                    held.revision = revision;
                    held.renewed_at = self.now;
                    held.valid_until = valid_until;
                }
            }
            Ok(revision) => {
                if self.stopping {
                    self.releasing.insert(resource.clone());
                    self.outbox.push_back(Action::Release { resource, revision });
                    return;
                }
                let valid_until = self.valid_from_asked(&resource);
                self.held.insert(
                    resource.clone(),
                    Held { state: State::Serving, revision, renewed_at: self.now, valid_until, renewing: false },
                );
                self.outbox.push_back(Action::Start { resource });
            }
            Err(TakeError::Held { holder }) if self.held.contains_key(&resource) => {
                self.halt(resource, format!("{holder} holds its lease now"));
            }
            Err(_) => {
                self.retry_at.insert(resource, self.now + self.config.retry_after_ms);
            }
        }
    }

    /// What a renewal came to.
    pub fn handle_renewed(&mut self, resource: Resource, result: Result<u64, RenewError>) {
        let valid_until = self.valid_from_asked(&resource);
        let Some(held) = self.held.get_mut(&resource) else { return };
        held.renewing = false;
        match result {
            Ok(revision) => {
                held.revision = revision;
                held.renewed_at = self.now;
                held.valid_until = held.valid_until.max(valid_until);
            }
            Err(RenewError::Unavailable) => {} // the fence guards the log meanwhile
            Err(RenewError::Lost { holder: None }) if held.state == State::Serving => {
                // It expired (a long election): create it again; a holder found there halts us.
                if self.taking.insert(resource.clone()) {
                    self.asked.insert(resource.clone(), self.now);
                    self.outbox.push_back(Action::Take { resource, over: None });
                }
            }
            Err(RenewError::Lost { holder }) => {
                let holder = holder.unwrap_or_else(|| "nobody".into());
                self.halt(resource, format!("{holder} holds its lease now"));
            }
        }
    }

    /// An append found the resource's fence moved: another instance decides for it.
    pub fn handle_deposed(&mut self, resource: Resource) {
        if self.held.contains_key(&resource) {
            self.halt(resource.clone(), "another instance took its fence".into());
            self.retry_at.insert(resource, self.now + self.config.retry_after_ms);
        }
    }

    /// The resource stopped serving (drained, halted, or it could not start).
    pub fn handle_stopped(&mut self, resource: Resource) {
        let Some(held) = self.held.remove(&resource) else { return };
        if held.state == State::Halting {
            return; // not ours any more: nothing to release
        }
        if held.state == State::Serving {
            // It ended by itself (recovery failed): give it up, try again later.
            self.retry_at.insert(resource.clone(), self.now + self.config.retry_after_ms);
        }
        self.releasing.insert(resource.clone());
        self.outbox.push_back(Action::Release { resource, revision: held.revision });
    }

    /// The lease was given up (or could not be: it expires by itself).
    pub fn handle_released(&mut self, resource: Resource) {
        self.releasing.remove(&resource);
        self.plan();
    }

    /// A graceful stop: every held resource drains, then its lease goes.
    pub fn shutdown(&mut self) {
        self.stopping = true;
        let serving: Vec<Resource> =
            self.held.iter().filter(|(_, h)| h.state == State::Serving).map(|(r, _)| r.clone()).collect();
        for resource in serving {
            self.drain(resource);
        }
    }

    fn drain(&mut self, resource: Resource) {
        if let Some(held) = self.held.get_mut(&resource)
            && held.state == State::Serving
        {
            held.state = State::Draining;
            self.outbox.push_back(Action::Drain { resource });
        }
    }

    fn halt(&mut self, resource: Resource, why: String) {
        if let Some(held) = self.held.get_mut(&resource)
            && held.state != State::Halting
        {
            held.state = State::Halting;
            self.outbox.push_back(Action::Halt { resource, why });
        }
    }

    /// Takes what is this instance's share and free; hands over what is not.
    fn plan(&mut self) {
        let live = self.live();
        for resource in self.resources() {
            let mine = self.mine(&resource, &live);
            if self.held.contains_key(&resource) {
                if !mine {
                    self.drain(resource);
                }
                continue;
            }
            // A lease of ours this instance does not hold (a take whose answer was lost) is not left
            // to expire: taken if it is our share (below), given back at once if not.
            if !mine
                && let Some((holder, revision)) = self.directory.leases.get(&resource)
                && *holder == self.config.instance
                && !self.taking.contains(&resource)
                && !self.releasing.contains(&resource)
            {
                let revision = *revision;
                self.releasing.insert(resource.clone());
                self.outbox.push_back(Action::Release { resource, revision });
                continue;
            }
            if !mine
                || self.taking.contains(&resource)
                || self.releasing.contains(&resource)
                || self.retry_at.get(&resource).is_some_and(|at| self.now < *at)
            {
                continue;
            }
            let over = match self.directory.leases.get(&resource) {
                None => None,
                // A live holder hands it over itself; a dead one's lease is taken over its revision.
                Some((holder, _)) if live.contains(holder) && *holder != self.config.instance => continue,
                Some((holder, revision)) => Some((holder.clone(), *revision)),
            };
            self.retry_at.remove(&resource);
            self.taking.insert(resource.clone());
            self.asked.insert(resource.clone(), self.now);
            self.outbox.push_back(Action::Take { resource, over });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, partitions: usize) -> Ownership {
        Ownership::new(OwnershipConfig::serve(id, partitions, vec!["feeds".into()]))
    }

    fn view(members: &[(&str, u64)], leases: &[(Resource, &str)]) -> DirectoryView {
        DirectoryView {
            members: members.iter().map(|(id, at)| ((*id).to_owned(), *at)).collect(),
            leases: leases.iter().map(|(r, h)| (r.clone(), ((*h).to_owned(), 1))).collect(),
        }
    }

    fn drain_actions(m: &mut Ownership) -> Vec<Action> {
        std::iter::from_fn(|| m.poll()).collect()
    }

    #[test]
    fn an_instance_alone_takes_everything_then_hands_half_over_to_a_newcomer() {
        let mut a = machine("a", 4);
        a.handle_timeout(0);
        let takes: Vec<Resource> = drain_actions(&mut a)
            .into_iter()
            .filter_map(|x| if let Action::Take { resource, over: None } = x { Some(resource) } else { None })
            .collect();
        assert_eq!(takes.len(), 5, "four partitions and the feeds role: {takes:?}");
        for resource in takes {
            a.handle_taken(resource, Ok(1));
        }
        assert!(drain_actions(&mut a).iter().all(|x| matches!(x, Action::Start { .. })));
        assert!(a.unowned_partitions().is_empty());
        // b joins: a keeps half (0 and 1) and the role; it drains 2 and 3, then releases them.
        let leases: Vec<(Resource, &str)> =
            a.held().cloned().map(|r| (r, "a")).collect::<Vec<_>>().into_iter().collect();
        a.handle_directory(view(&[("a", 100), ("b", 100)], &leases), 100);
        let drains: Vec<Action> = drain_actions(&mut a);
        assert_eq!(
            drains,
            vec![
                Action::Drain { resource: Resource::Partition(2) },
                Action::Drain { resource: Resource::Partition(3) }
            ]
        );
        a.handle_stopped(Resource::Partition(2));
        assert_eq!(drain_actions(&mut a), vec![Action::Release { resource: Resource::Partition(2), revision: 1 }]);
        // b sees a still holding 2 and 3: they are its share, but it waits for a's handover.
        let mut b = machine("b", 4);
        b.handle_directory(view(&[("a", 100), ("b", 100)], &leases), 100);
        assert!(drain_actions(&mut b).iter().all(|x| !matches!(x, Action::Take { .. })));
        let released: Vec<(Resource, &str)> =
            leases.iter().filter(|(r, _)| *r != Resource::Partition(2)).cloned().collect();
        b.handle_directory(view(&[("a", 200), ("b", 200)], &released), 200);
        assert_eq!(drain_actions(&mut b), vec![Action::Take { resource: Resource::Partition(2), over: None }]);
    }

    #[test]
    fn a_death_moves_only_the_dead_instances_partitions() {
        let leases = [
            (Resource::Partition(0), "a"),
            (Resource::Partition(1), "b"),
            (Resource::Partition(2), "c"),
            (Resource::Partition(3), "a"),
            (Resource::Partition(4), "b"),
            (Resource::Role("feeds".into()), "b"),
        ];
        let members = [("a", 0), ("b", 0), ("c", 0)];
        let mut shares = BTreeMap::new();
        for id in ["b", "c"] {
            let mut m = machine(id, 5);
            m.handle_directory(view(&members, &leases), 0);
            for x in drain_actions(&mut m) {
                if let Action::Take { resource, .. } = x {
                    m.handle_taken(resource, Ok(1));
                }
            }
            drain_actions(&mut m);
            // a's connection is gone: b and c take a's two partitions, one each, and nothing else moves.
            m.handle_probed("a", Some(false));
            let actions = drain_actions(&mut m);
            assert!(
                actions.iter().all(|x| matches!(x, Action::Take { over: Some((h, 1)), .. } if h == "a")),
                "{actions:?}"
            );
            shares.insert(id, actions);
        }
        assert_eq!(shares["b"], vec![Action::Take { resource: Resource::Partition(0), over: Some(("a".into(), 1)) }]);
        assert_eq!(shares["c"], vec![Action::Take { resource: Resource::Partition(3), over: Some(("a".into(), 1)) }]);
    }

    #[test]
    fn a_dead_holders_lease_is_taken_over_at_once_and_a_live_ones_waited_for() {
        let mut b = machine("b", 2);
        let leases =
            [(Resource::Partition(0), "a"), (Resource::Partition(1), "a"), (Resource::Role("feeds".into()), "a")];
        b.handle_directory(view(&[("a", 0), ("b", 0)], &leases), 0);
        // a is alive and holds partition 1 (b's share): b waits for a's handover.
        assert!(drain_actions(&mut b).iter().all(|x| !matches!(x, Action::Take { .. })));
        // a's connection is gone: everything of a's becomes b's at once, over a's revisions.
        b.handle_probed("a", Some(false));
        let takes: Vec<Action> =
            drain_actions(&mut b).into_iter().filter(|x| matches!(x, Action::Take { .. })).collect();
        assert_eq!(takes.len(), 3, "{takes:?}");
        assert!(takes.iter().all(|x| matches!(x, Action::Take { over: Some((h, 1)), .. } if h == "a")));
        // a heartbeats again (it was paused, not dead): it is live again.
        b.handle_directory(view(&[("a", 5_000), ("b", 5_000)], &leases), 5_000);
        assert_eq!(b.live(), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn renewals_that_fail_change_nothing_until_the_halt_deadline_and_a_lost_lease_halts_at_once() {
        let mut a = machine("a", 1);
        a.handle_timeout(0);
        drain_actions(&mut a);
        a.handle_taken(Resource::Partition(0), Ok(1));
        a.handle_taken(Resource::Role("feeds".into()), Ok(1));
        drain_actions(&mut a);
        // An election: renewals fail for 10 s; the partition keeps serving.
        for t in (1_000..=10_000).step_by(1_000) {
            a.handle_timeout(t);
            for x in drain_actions(&mut a) {
                if let Action::Renew { resource, .. } = x {
                    a.handle_renewed(resource, Err(RenewError::Unavailable));
                }
            }
        }
        assert!(a.serves(&Resource::Partition(0)));
        // The key expired meanwhile: created again, still serving.
        a.handle_timeout(11_000);
        for x in drain_actions(&mut a) {
            if let Action::Renew { resource, .. } = x {
                a.handle_renewed(resource, Err(RenewError::Lost { holder: None }));
            }
        }
        let again = drain_actions(&mut a);
        assert!(again.iter().any(|x| matches!(x, Action::Take { resource: Resource::Partition(0), over: None })));
        a.handle_taken(Resource::Partition(0), Ok(7));
        assert!(a.serves(&Resource::Partition(0)));
        // Another holds it: halt at once.
        a.handle_renewed(Resource::Partition(0), Err(RenewError::Lost { holder: Some("b".into()) }));
        assert!(matches!(a.poll(), Some(Action::Halt { resource: Resource::Partition(0), .. })));
        // Cut off for the halt deadline: the role halts too.
        a.handle_timeout(11_000 + HALT_AFTER_MS);
        assert!(drain_actions(&mut a).iter().any(|x| matches!(x, Action::Halt { resource: Resource::Role(_), .. })));
    }

    #[test]
    fn a_newcomer_does_not_take_a_lease_whose_holders_heartbeat_it_has_not_seen_yet() {
        let mut b = machine("b", 1);
        // b's first view shows a's lease before a's heartbeat.
        b.handle_directory(view(&[("b", 0)], &[(Resource::Partition(0), "a")]), 0);
        b.handle_timeout(0);
        let actions = drain_actions(&mut b);
        assert!(
            actions.iter().all(|x| !matches!(x, Action::Take { resource: Resource::Partition(0), .. })),
            "{actions:?}"
        );
        assert!(actions.contains(&Action::Probe { instance: "a".into() }), "{actions:?}");
        // The probe finds a's connection gone: a's lease is taken over at once.
        b.handle_probed("a", Some(false));
        let takes = drain_actions(&mut b);
        assert!(
            takes.contains(&Action::Take { resource: Resource::Partition(0), over: Some(("a".into(), 1)) }),
            "{takes:?}"
        );
        // Without a probe's answer, a holder never seen heartbeating for a member TTL is dead.
        let mut c = machine("c", 1);
        c.handle_directory(view(&[("c", 0)], &[(Resource::Partition(0), "a")]), 0);
        drain_actions(&mut c);
        c.handle_timeout(MEMBER_TTL_MS);
        let late = drain_actions(&mut c);
        assert!(
            late.iter().any(|x| matches!(x, Action::Take { resource: Resource::Partition(0), over: Some(_) })),
            "{late:?}"
        );
    }

    #[test]
    fn a_hold_is_confirmed_from_when_its_take_or_renewal_was_asked() {
        let mut a = machine("a", 1);
        let p = Resource::Partition(0);
        a.handle_timeout(0);
        for x in drain_actions(&mut a) {
            if let Action::Take { resource, .. } = x {
                a.handle_taken(resource, Ok(1));
            }
        }
        drain_actions(&mut a);
        let good = MEMBER_TTL_MS - RENEW_EVERY_MS;
        assert!(a.confirmed(&p, good - 1) && !a.confirmed(&p, good));
        // Paused past it (no renewal asked meanwhile): not confirmed, until a renewal asked now succeeds.
        a.handle_timeout(20_000);
        assert!(!a.confirmed(&p, 20_000));
        let renew =
            drain_actions(&mut a).into_iter().find(|x| matches!(x, Action::Renew { resource, .. } if *resource == p));
        assert!(renew.is_some());
        a.handle_renewed(p.clone(), Ok(2));
        assert!(a.confirmed(&p, 20_000) && a.confirmed(&p, 20_000 + good - 1) && !a.confirmed(&p, 20_000 + good));
    }

    #[test]
    fn a_graceful_stop_drains_and_releases_everything() {
        let mut a = machine("a", 2);
        a.handle_timeout(0);
        for x in drain_actions(&mut a) {
            if let Action::Take { resource, .. } = x {
                a.handle_taken(resource, Ok(3));
            }
        }
        drain_actions(&mut a);
        a.shutdown();
        let drains = drain_actions(&mut a);
        assert_eq!(drains.len(), 3);
        for x in drains {
            let Action::Drain { resource } = x else { panic!("{x:?}") };
            a.handle_stopped(resource.clone());
            assert_eq!(a.poll(), Some(Action::Release { resource: resource.clone(), revision: 3 }));
            a.handle_released(resource);
        }
        assert!(a.is_stopped());
    }
}
