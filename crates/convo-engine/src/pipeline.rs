//! The service's command pipeline: appends of different aggregates are in
//! flight together, while each aggregate still decides one command at a time.
//!
//! A command for an aggregate with an append in flight waits in that
//! aggregate's mailbox (at most [`MAILBOX_COMMANDS_MAX`]; beyond, the request
//! is refused as `overloaded`), and is decided once the append before it is
//! acknowledged and applied, so it sees its predecessor's effects. At most
//! [`APPENDS_IN_FLIGHT_MAX`] appends are outstanding; intake pauses beyond.
//! Routing proposes one assignment at a time, so an agent is never offered
//! two conversations from the same free slot.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use convo_domain::{AccountId, Command, CommandEnvelope, Timestamp};
use convo_store::bus::{Request, Responder};
use convo_store::{EventStore, StoreError};
use convo_wire::{Commit, StreamRef};

use crate::core::{Decided, World, stream_of};
use crate::intake::{overloaded, parse_request, reply, unavailable};
use crate::runtime::{CONFLICT_RETRIES_MAX, Outcome, refresh};

/// Commands waiting behind one aggregate's in-flight append.
pub const MAILBOX_COMMANDS_MAX: usize = 64;
/// Appends outstanding at once, across aggregates.
pub const APPENDS_IN_FLIGHT_MAX: usize = 256;

type Key = (AccountId, StreamRef);

/// Where a command came from, and so who hears of its outcome.
#[derive(Debug)]
pub enum Origin {
    Request(Request),
    Timer,
    Routing,
}

#[derive(Debug)]
pub struct Work {
    pub envelope: CommandEnvelope,
    pub now: Timestamp,
    pub origin: Origin,
    attempts: u32,
}

impl Work {
    pub fn new(envelope: CommandEnvelope, now: Timestamp, origin: Origin) -> Self {
        Self { envelope, now, origin, attempts: 0 }
    }
}

/// An append that finished (acknowledged or failed).
#[derive(Debug)]
pub struct Done {
    key: Key,
    work: Work,
    commit: Commit,
    result: Result<u64, StoreError>,
}

type Pending = Pin<Box<dyn Future<Output = Done> + Send>>;

/// What the pipeline has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub committed: u64,
    pub overloaded: u64,
    /// The most appends that were in flight at once.
    pub in_flight_max: usize,
}

/// The pipeline's state; the caller's loop feeds it work and completions.
pub struct Pipeline<S> {
    store: S,
    busy: HashMap<Key, VecDeque<Work>>,
    appends: FuturesUnordered<Pending>,
    /// A routing assignment is submitted and not finished yet.
    routing: bool,
    pub stats: PipelineStats,
}

fn key_of(envelope: &CommandEnvelope) -> Key {
    (envelope.account.clone(), stream_of(&envelope.command))
}

impl<S> std::fmt::Debug for Pipeline<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("in_flight", &self.appends.len())
            .field("busy", &self.busy.len())
            .field("routing", &self.routing)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<S: EventStore + Clone + 'static> Pipeline<S> {
    pub fn new(store: S) -> Self {
        Self {
            store,
            busy: HashMap::new(),
            appends: FuturesUnordered::new(),
            routing: false,
            stats: PipelineStats::default(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.appends.len()
    }

    pub fn is_idle(&self) -> bool {
        self.appends.is_empty() && self.busy.is_empty()
    }

    /// Takes a command: decides it now, or queues it behind its aggregate's append.
    pub async fn submit(&mut self, world: &mut World, bus: &Responder, work: Work) {
        let key = key_of(&work.envelope);
        if let Some(queue) = self.busy.get_mut(&key) {
            if queue.len() < MAILBOX_COMMANDS_MAX {
                queue.push_back(work);
            } else {
                self.stats.overloaded += 1;
                let body = overloaded(&format!("{MAILBOX_COMMANDS_MAX} commands already wait for this aggregate"));
                self.finish(bus, &work.origin, &body).await;
                if let (Origin::Timer, Command::Tick(t)) = (&work.origin, &work.envelope.command) {
                    world.rearm(&work.envelope.account, &t.conversation);
                }
            }
            return;
        }
        if world.is_evicted(&key.0, &key.1)
            && let Err(e) = refresh(&self.store, world, &key.0, &key.1).await.map(|_| ())
        {
            return self.finish(bus, &work.origin, &unavailable(&e.to_string())).await;
        }
        self.decide(world, bus, key, work).await;
    }

    async fn decide(&mut self, world: &mut World, bus: &Responder, key: Key, work: Work) {
        let commit = match world.decide(&work.envelope, work.now) {
            Ok(Decided::Commit(commit)) => commit,
            Ok(Decided::Nothing) => return self.finish(bus, &work.origin, &reply(&Outcome::Nothing)).await,
            Ok(Decided::Duplicate { first_seq, last_seq }) => {
                return self.finish(bus, &work.origin, &reply(&Outcome::Duplicate { first_seq, last_seq })).await;
            }
            Err(refusal) => return self.finish(bus, &work.origin, &reply(&Outcome::Refused(refusal))).await,
        };
        let expected = world.expected(&commit.account, &commit.stream);
        self.busy.insert(key.clone(), VecDeque::new());
        let store = self.store.clone();
        self.appends.push(Box::pin(async move {
            let result = store.append(&commit, expected).await;
            Done { key, work, commit, result }
        }));
        self.stats.in_flight_max = self.stats.in_flight_max.max(self.appends.len());
    }

    /// The next append to finish (pending forever when none is in flight).
    pub async fn next_done(&mut self) -> Done {
        match self.appends.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// Applies a finished append, answers its command, and lets the commands
    /// waiting behind it go.
    pub async fn apply_done(&mut self, world: &mut World, bus: &Responder, done: Done) {
        let Done { key, mut work, commit, result } = done;
        let waiting = self.busy.remove(&key).unwrap_or_default();
        match result {
            Ok(log_seq) => {
                world.apply_commit(&commit, log_seq);
                self.stats.committed += 1;
                self.finish(bus, &work.origin, &reply(&Outcome::Committed { log_seq, commit })).await;
            }
            Err(StoreError::Conflict { .. }) if work.attempts < CONFLICT_RETRIES_MAX => {
                // Another writer got there first: learn what it wrote, decide again first.
                work.attempts += 1;
                match refresh(&self.store, world, &key.0, &key.1).await.map(|_| ()) {
                    Ok(()) => self.decide(world, bus, key.clone(), work).await,
                    Err(e) => self.finish(bus, &work.origin, &unavailable(&e.to_string())).await,
                }
            }
            Err(e) => {
                if let (Origin::Timer, Command::Tick(t)) = (&work.origin, &work.envelope.command) {
                    world.rearm(&work.envelope.account, &t.conversation);
                }
                self.finish(bus, &work.origin, &unavailable(&e.to_string())).await;
            }
        }
        for next in waiting {
            self.submit(world, bus, next).await;
        }
    }

    /// Proposes routing's next assignment, one at a time: the floor changes
    /// only when an assignment is applied, so a second proposal before then
    /// could offer the same free slot twice.
    pub async fn route(&mut self, world: &mut World, bus: &Responder, now: Timestamp) {
        if self.routing {
            return;
        }
        let Some(assign) = world.next_assignment() else { return };
        self.routing = true;
        self.submit(world, bus, Work::new(assign, now, Origin::Routing)).await;
    }

    /// Notes that a command finished (answered, applied or refused).
    async fn finish(&mut self, bus: &Responder, origin: &Origin, body: &serde_json::Value) {
        if matches!(origin, Origin::Routing) {
            self.routing = false;
        }
        answer(bus, origin, body).await;
    }

    /// Fires due timers whose conversations are free (the rest queue behind their append).
    pub async fn fire_due(&mut self, world: &mut World, bus: &Responder, now: Timestamp) {
        while world.next_timer().is_some_and(|d| d <= now) {
            let Some((tick, _)) = world.next_tick() else { break };
            self.submit(world, bus, Work::new(tick, now, Origin::Timer)).await;
        }
    }

    /// Parses a request and submits it.
    pub async fn take_request(
        &mut self,
        world: &mut World,
        bus: &Responder,
        request: Request,
        now: Timestamp,
        bytes_max: usize,
    ) {
        match parse_request(&request.account, &request.payload, bytes_max) {
            Err(e) => answer(bus, &Origin::Request(request), &e.to_json()).await,
            Ok(envelope) => self.submit(world, bus, Work::new(envelope, now, Origin::Request(request))).await,
        }
    }
}

async fn answer(bus: &Responder, origin: &Origin, body: &serde_json::Value) {
    if let Origin::Request(request) = origin {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        if let Err(e) = bus.respond(request, bytes).await {
            eprintln!("convo: cannot answer {}: {e}", request.subject);
        }
    }
}
