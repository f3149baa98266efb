//! A seeded random day of contact-center traffic.
//!
//! The workload is a [`Driver`] that reacts to what the engine did, the way
//! people would: contacts arrive over the day (busier in office hours), agents
//! answer after a delay once routing gives them the conversation, contacts
//! reply, go quiet, or vanish; agents take breaks, sometimes transfer, and
//! close with a typification. Everything it draws comes from one seed through
//! a small generator of its own (SplitMix64), so a seed names one run forever,
//! whatever crate versions come and go.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr};

use convo_domain::automation::{Action as Do, AutomationSpec, Condition, On};
use convo_domain::command::{
    AnswerSurvey, Close, ReceiveMessage, SendMessage, SetAgentState, Transfer, TransferTarget,
};
use convo_domain::config::{
    AccountSettings, AutoMessage, CampaignSpec, ChannelKind, ChannelMessages, ChannelSpec, ClientSpec, OutOfHours,
    OutOfHoursAction, Permissions, ProjectSpec, Role, SlaMode, SlaModeSpec, TeamSpec, Typification, UserSpec,
};
use convo_domain::conversation::{Author, Trigger};
use convo_domain::schedule::{HoursRange, ScheduleSpec, Week, Zone};
use convo_domain::{
    AccountId, Actor, CampaignId, ChannelId, Command, CommandEnvelope, CommandId, ContactId, ConversationEvent,
    ConversationId, TeamId, Timestamp, TypificationId, UserId,
};

use crate::Driver;
use crate::scenario::{DEFAULT_ACCOUNT, Input};
use crate::world::Record;

/// The most conversations one random day may hold.
pub const CONVERSATIONS_MAX: u32 = 2_000_000;

/// The policy the random day runs on (the model checks against it).
pub const SLA_OPTIMAL_SECS: u32 = 60;
pub const SLA_LOW_SECS: u32 = 180;
pub const INACTIVITY_SECS: u32 = 300;
pub const INACTIVITY_ATTEMPTS: u32 = 1;
pub const AUTO_RESOLVE_DAYS: u32 = 1;

/// The support campaign's daily opening hours (UTC): 08:00 to 20:00; its
/// SLA counts only those hours (business-hours mode).
pub const SUPPORT_OPENS_SECS: u32 = 8 * 3600;
pub const SUPPORT_CLOSES_SECS: u32 = 20 * 3600;
/// The support campaign's inbound channel (the one with office hours).
pub const SUPPORT_CHANNEL: &str = "web-support";

/// An automation labels conversations whose contact mentions this word.
const BILLING_WORD: &str = "factura";
const BILLING_LABEL: &str = "billing";
/// A team of half the sales agents, some sales transfers go to.
const SALES_TEAM: &str = "key-accounts";
const DAY_START: &str = "2026-03-02T00:00:00Z";
const CAMPAIGNS: [&str; 2] = ["sales", "support"];
const CHANNELS: [&str; 2] = ["wa-sales", SUPPORT_CHANNEL];
/// The gateway that passes on the messages of contacts it knows by number only.
const GATEWAY: &str = "wa-gateway";
const CLOSING: [&str; 3] = ["sale", "info", "complaint"];
const NAMES: [&str; 12] =
    ["Ana", "Luis", "María", "Jorge", "Sofía", "Diego", "Valentina", "Andrés", "Camila", "Mateo", "Lucía", "Pablo"];
/// Relative arrivals per hour of the day (UTC).
const HOUR_WEIGHTS: [u32; 24] = [1, 1, 1, 1, 1, 2, 4, 7, 9, 10, 10, 9, 8, 9, 10, 10, 9, 8, 7, 5, 4, 3, 2, 1];

/// The rules the random day runs on, as the independent model states them.
pub fn model_rules() -> crate::model::Rules {
    crate::model::Rules {
        optimal_secs: SLA_OPTIMAL_SECS,
        low_secs: SLA_LOW_SECS,
        inactivity_secs: INACTIVITY_SECS,
        attempts: INACTIVITY_ATTEMPTS,
        auto_resolve_days: AUTO_RESOLVE_DAYS,
        daily_hours: [(SUPPORT_CHANNEL.to_owned(), (SUPPORT_OPENS_SECS, SUPPORT_CLOSES_SECS))].into_iter().collect(),
        channel_campaigns: CHANNELS.iter().zip(CAMPAIGNS).map(|(ch, ca)| (ch.to_string(), ca.to_string())).collect(),
        business_hours: [(CAMPAIGNS[1].to_owned(), (SUPPORT_OPENS_SECS, SUPPORT_CLOSES_SECS))].into_iter().collect(),
        keyword_label: Some((BILLING_WORD.to_owned(), BILLING_LABEL.to_owned())),
    }
}

/// How many of the agents work sales (around the clock); the rest work support.
fn sales_agents(total: usize) -> usize {
    (total * 2 / 5).max(2)
}

/// SplitMix64: tiny, fast, and fixed forever (unlike a library's stream).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next_u64() % items.len() as u64) as usize]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Presence(usize, &'static str),
    Arrive(usize),
    ContactWrites(usize),
    AgentReplies(usize, usize),
    AgentCloses(usize, usize),
    AnswerSurvey(usize),
}

#[derive(Debug, Clone)]
struct Conv {
    id: ConversationId,
    contact: ContactId,
    /// A quarter of the contacts reach the gateway by their number only: its
    /// messages name them by `handle` (a few numbers write several times a
    /// day), so the engine makes their contacts (SPEC §13).
    handle: Option<String>,
    channel: usize,
    name: &'static str,
    exchanges_left: u8,
    awaiting_agent: bool,
    reply_pending: bool,
    assignee: Option<usize>,
    closed: bool,
    transferred: bool,
}

/// The random day: its configuration, its people and their behaviour.
#[derive(Debug)]
pub struct RandomDay {
    rng: Rng,
    account: AccountId,
    start: Timestamp,
    agents: Vec<UserId>,
    agent_index: BTreeMap<UserId, usize>,
    convs: Vec<Conv>,
    conv_index: BTreeMap<ConversationId, usize>,
    queue: BinaryHeap<Reverse<(Timestamp, u64, Action)>>,
    order: u64,
    setup: std::vec::IntoIter<Input>,
    taken: u64,
}

fn id<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().expect("a valid id")
}

impl RandomDay {
    pub fn new(seed: u64, conversations: u32) -> Self {
        let conversations = conversations.min(CONVERSATIONS_MAX) as usize;
        let mut rng = Rng::new(seed);
        let start = Timestamp::parse_rfc3339(DAY_START).expect("valid");
        let agent_count = (conversations / 200).max(4);
        let agents: Vec<UserId> = (0..agent_count).map(|i| id(&format!("agent-{i:04}"))).collect();
        let mut day = Self {
            rng: rng.clone(),
            account: id(DEFAULT_ACCOUNT),
            start,
            agent_index: agents.iter().cloned().enumerate().map(|(i, a)| (a, i)).collect(),
            agents,
            convs: Vec::with_capacity(conversations),
            conv_index: BTreeMap::new(),
            queue: BinaryHeap::new(),
            order: 0,
            setup: Vec::new().into_iter(),
            taken: 0,
        };
        // Arrivals over the day.
        let total: u32 = HOUR_WEIGHTS.iter().sum();
        for n in 0..conversations {
            let mut draw = rng.range(0, u64::from(total) - 1) as u32;
            let hour = HOUR_WEIGHTS.iter().position(|w| {
                if draw < *w {
                    true
                } else {
                    draw -= w;
                    false
                }
            });
            let at = start.plus_secs(hour.unwrap_or(0) as u64 * 3600 + rng.range(0, 3599));
            let conv = Conv {
                id: id(&format!("r{n:07}")),
                contact: id(&format!("ct-{n:07}")),
                handle: (n % 4 == 3).then(|| format!("+57310{:07}", (n / 4) % (conversations / 16).max(1))),
                channel: rng.range(0, 1) as usize,
                name: rng.pick(&NAMES),
                exchanges_left: rng.range(0, 3) as u8,
                awaiting_agent: false,
                reply_pending: false,
                assignee: None,
                closed: false,
                transferred: false,
            };
            day.conv_index.insert(conv.id.clone(), n);
            day.convs.push(conv);
            day.schedule(at, Action::Arrive(n));
        }
        // Sales works around the clock; support agents work its opening hours.
        // Each agent takes a lunch and a short break.
        // Support also works the next day, for what arrived out of hours.
        let sales = sales_agents(agent_count);
        for a in 0..agent_count {
            if a < sales {
                day.schedule(start, Action::Presence(a, "available"));
            } else {
                for shift in [0, 86_400] {
                    day.schedule(
                        start.plus_secs(shift + u64::from(SUPPORT_OPENS_SECS)),
                        Action::Presence(a, "available"),
                    );
                    day.schedule(
                        start.plus_secs(shift + u64::from(SUPPORT_CLOSES_SECS)),
                        Action::Presence(a, "offline"),
                    );
                }
            }
            let lunch = start.plus_secs(rng.range(11 * 3600, 15 * 3600));
            day.schedule(lunch, Action::Presence(a, "lunch"));
            day.schedule(lunch.plus_secs(1800), Action::Presence(a, "available"));
            let pause = start.plus_secs(rng.range(8 * 3600, 19 * 3600));
            if pause.plus_secs(900) < lunch || pause > lunch.plus_secs(1800) {
                day.schedule(pause, Action::Presence(a, "break"));
                day.schedule(pause.plus_secs(900), Action::Presence(a, "available"));
            }
        }
        day.rng = rng;
        day.setup = day.configuration().into_iter();
        day
    }

    fn schedule(&mut self, at: Timestamp, action: Action) {
        self.order += 1;
        self.queue.push(Reverse((at, self.order, action)));
    }

    fn input(&self, at: Timestamp, id: String, actor: Actor, command: Command) -> Input {
        Input {
            at,
            envelope: CommandEnvelope {
                id: CommandId::new(&id).expect("valid"),
                account: self.account.clone(),
                actor,
                command,
            },
            line: None,
        }
    }

    fn agent_actor(&self, agent: usize) -> Actor {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 20, (agent / 250) as u8, (agent % 250 + 1) as u8));
        Actor::User { id: self.agents[agent].clone(), ip: Some(ip) }
    }

    /// The configuration lines that open the day.
    fn configuration(&self) -> Vec<Input> {
        let at = self.start;
        let sys = Actor::system("setup");
        let all_day = vec![HoursRange::parse("00:00-24:00").expect("valid")];
        let on = |text: &str| AutoMessage { enabled: true, text: text.into() };
        let mut commands = vec![
            Command::ConfigureAccount(AccountSettings {
                name: "Random day".into(),
                auto_resolve_after_days: AUTO_RESOLVE_DAYS,
                labels: vec!["vip".into(), BILLING_LABEL.into()],
                typifications: ["sale", "info", "complaint", "inactivity", "transferred"]
                    .iter()
                    .map(|t| Typification { id: id(t), name: t.to_string() })
                    .collect(),
                allowed_networks: vec!["10.20.0.0/16".into()],
                ..AccountSettings::default()
            }),
            Command::DefineClient(ClientSpec {
                id: id("acme"),
                name: "Acme".into(),
                code: "1001".into(),
                sla_optimal_secs: SLA_OPTIMAL_SECS,
                sla_low_secs: SLA_LOW_SECS,
                max_history_conversations: 10,
                max_inactivity_secs: INACTIVITY_SECS,
                inactivity_attempts: INACTIVITY_ATTEMPTS,
            }),
            Command::DefineProject(ProjectSpec { id: id("care"), client: id("acme"), name: "Customer care".into() }),
            Command::DefineSchedule(ScheduleSpec {
                id: id("always"),
                name: "24/7".into(),
                time_zone: Zone::default(),
                week: Week {
                    mon: all_day.clone(),
                    tue: all_day.clone(),
                    wed: all_day.clone(),
                    thu: all_day.clone(),
                    fri: all_day.clone(),
                    sat: all_day.clone(),
                    sun: all_day,
                },
                holidays: Vec::new(),
            }),
            Command::DefineSchedule(ScheduleSpec {
                id: id("office"),
                name: "08:00-20:00 UTC".into(),
                time_zone: Zone::default(),
                week: {
                    let open = vec![HoursRange::parse("08:00-20:00").expect("valid")];
                    Week {
                        mon: open.clone(),
                        tue: open.clone(),
                        wed: open.clone(),
                        thu: open.clone(),
                        fri: open.clone(),
                        sat: open.clone(),
                        sun: open,
                    }
                },
                holidays: Vec::new(),
            }),
        ];
        for (i, channel) in CHANNELS.iter().enumerate() {
            commands.push(Command::DefineChannel(ChannelSpec {
                id: id(channel),
                kind: if i == 0 { ChannelKind::Whatsapp } else { ChannelKind::Webchat },
                external_id: if i == 0 { "+5215550000000".into() } else { "widget-1".into() },
                messages: ChannelMessages {
                    welcome: on("Hola {contact_name}, gracias por escribir a {company}."),
                    inactivity_alert: on("¿Sigues ahí, {contact_name}?"),
                    transfer_notice: on("Te comunicamos con otro equipo."),
                    closing: on("Gracias por contactar a {company}."),
                    survey: if i == 0 {
                        on("{contact_name}, ¿cómo te atendió {agent_name}? Califica de 1 a 5.")
                    } else {
                        AutoMessage::default()
                    },
                },
            }));
        }
        for (i, agent) in self.agents.iter().enumerate() {
            commands.push(Command::DefineUser(UserSpec {
                id: agent.clone(),
                name: format!("Agent {i}"),
                email: format!("{agent}@acme.example"),
                role: Role::Agent,
                max_concurrent_conversations: 3,
            }));
        }
        let sales = sales_agents(self.agents.len());
        for (i, campaign) in CAMPAIGNS.iter().enumerate() {
            let agents = if i == 0 { &self.agents[..sales] } else { &self.agents[sales..] };
            commands.push(Command::DefineCampaign(CampaignSpec {
                id: id(campaign),
                client: id("acme"),
                project: id("care"),
                name: campaign.to_string(),
                channels: vec![id(CHANNELS[i])],
                schedule: id(if i == 0 { "always" } else { "office" }),
                out_of_hours: OutOfHours {
                    action: OutOfHoursAction::Enqueue,
                    message: on("Nuestro horario es de 8:00 a 20:00; te respondemos al abrir."),
                },
                inactivity_typification: id("inactivity"),
                transfer_typification: id("transferred"),
                closing_typifications: CLOSING.iter().map(|t| id(t)).collect(),
                ignore_comment_typification: None,
                permissions: Permissions { allow_emoji: true, ..Permissions::default() },
                dynamic_fields: Vec::new(),
                agents: agents.to_vec(),
            }));
        }
        commands.push(Command::DefineTeam(TeamSpec {
            id: id(SALES_TEAM),
            name: "Key accounts".into(),
            members: self.agents[..sales.div_ceil(2)].to_vec(),
            supervisors: Vec::new(),
        }));
        commands.push(Command::DefineAutomation(AutomationSpec {
            id: id("billing"),
            name: "Label billing questions".into(),
            on: On::MessageReceived,
            conditions: vec![Condition::TextContains(BILLING_WORD.into()), Condition::LacksLabel(BILLING_LABEL.into())],
            actions: vec![Do::AddLabel(BILLING_LABEL.into())],
        }));
        commands.push(Command::SetSlaMode(SlaModeSpec {
            client: None,
            campaign: Some(id(CAMPAIGNS[1])),
            mode: Some(SlaMode::BusinessHours),
        }));
        // A day's content retention on one campaign: its conversations' expiries
        // fall due after the day, when most of them have left memory.
        commands.push(Command::SetRetention(convo_domain::config::RetentionSpec {
            campaign: Some(id(CAMPAIGNS[0])),
            content_days: Some(1),
        }));
        commands
            .into_iter()
            .enumerate()
            .map(|(n, command)| self.input(at, format!("setup-{n}"), sys.clone(), command))
            .collect()
    }

    /// Whether a scheduled action still makes sense (people don't write into
    /// closed conversations, and a transferred agent doesn't answer).
    fn still_valid(&self, action: &Action) -> bool {
        match action {
            Action::Presence(..) | Action::Arrive(_) | Action::AnswerSurvey(_) => true,
            Action::ContactWrites(c) => !self.convs[*c].closed,
            Action::AgentReplies(c, a) | Action::AgentCloses(c, a) => {
                let conv = &self.convs[*c];
                !conv.closed && conv.assignee == Some(*a)
            }
        }
    }

    fn reply_delay(&mut self) -> u64 {
        match self.rng.range(0, 99) {
            0..=59 => self.rng.range(3, 55),
            60..=84 => self.rng.range(65, 175),
            _ => self.rng.range(185, 600),
        }
    }

    fn contact_writes(&mut self, c: usize, at: Timestamp) {
        let conv = &mut self.convs[c];
        conv.awaiting_agent = true;
        if let (Some(agent), false) = (conv.assignee, conv.reply_pending) {
            conv.reply_pending = true;
            let delay = self.reply_delay();
            self.schedule(at.plus_secs(delay), Action::AgentReplies(c, agent));
        }
        if self.rng.chance(15) {
            let delay = self.rng.range(5, 40);
            self.schedule(at.plus_secs(delay), Action::ContactWrites(c));
        }
    }

    fn text(&mut self, words: &[&str]) -> String {
        self.rng.pick(words).to_owned()
    }

    fn act(&mut self, at: Timestamp, action: Action) -> Input {
        self.taken += 1;
        let n = self.taken;
        match action {
            Action::Presence(a, state) => {
                let command =
                    Command::SetAgentState(SetAgentState { agent: self.agents[a].clone(), state: state.into() });
                self.input(at, format!("w{n}"), self.agent_actor(a), command)
            }
            Action::Arrive(c) | Action::ContactWrites(c) => {
                self.contact_writes(c, at);
                let text = self.text(&[
                    "Hola",
                    "Necesito ayuda con mi pedido",
                    "¿Tienen envío gratis?",
                    "Sigo esperando",
                    "Gracias",
                    "Mi factura está mal",
                ]);
                let conv = &self.convs[c];
                let command = Command::ReceiveMessage(ReceiveMessage {
                    conversation: conv.id.clone(),
                    contact: conv.handle.is_none().then(|| conv.contact.clone()),
                    handle: conv.handle.clone(),
                    channel: id::<ChannelId>(CHANNELS[conv.channel]),
                    contact_name: matches!(action, Action::Arrive(_)).then(|| conv.name.to_owned()),
                    text,
                    attachments: Vec::new(),
                });
                self.input(at, format!("w{n}"), conv.actor(), command)
            }
            Action::AgentReplies(c, a) => {
                self.convs[c].reply_pending = false;
                if !self.convs[c].transferred && self.rng.chance(4) {
                    self.convs[c].transferred = true;
                    let other = CAMPAIGNS[1 - self.convs[c].channel];
                    // Half the sales transfers go to the sales team instead of support.
                    let to = if self.convs[c].channel == 0 && self.rng.chance(50) {
                        TransferTarget::Team(id::<TeamId>(SALES_TEAM))
                    } else {
                        TransferTarget::Campaign(id::<CampaignId>(other))
                    };
                    let command = Command::Transfer(Transfer { conversation: self.convs[c].id.clone(), to });
                    return self.input(at, format!("w{n}"), self.agent_actor(a), command);
                }
                self.convs[c].awaiting_agent = false;
                if self.convs[c].exchanges_left > 0 {
                    self.convs[c].exchanges_left -= 1;
                    match self.rng.range(0, 99) {
                        0..=64 => {
                            let delay = self.rng.range(5, 150);
                            self.schedule(at.plus_secs(delay), Action::ContactWrites(c));
                        }
                        65..=84 => {
                            let delay = self.rng.range(310, 590);
                            self.schedule(at.plus_secs(delay), Action::ContactWrites(c));
                        }
                        _ => {} // the contact vanishes: inactivity will close it
                    }
                } else {
                    let delay = self.rng.range(5, 90);
                    self.schedule(at.plus_secs(delay), Action::AgentCloses(c, a));
                }
                let text = self.text(&[
                    "Con gusto te ayudo",
                    "Ya lo reviso",
                    "Listo, quedó resuelto",
                    "¿Me compartes tu número de pedido?",
                ]);
                let command = Command::SendMessage(SendMessage {
                    conversation: self.convs[c].id.clone(),
                    text,
                    attachments: Vec::new(),
                });
                self.input(at, format!("w{n}"), self.agent_actor(a), command)
            }
            Action::AgentCloses(c, a) => {
                let typification = id::<TypificationId>(self.rng.pick(&CLOSING));
                let command = Command::Close(Close { conversation: self.convs[c].id.clone(), typification });
                self.input(at, format!("w{n}"), self.agent_actor(a), command)
            }
            Action::AnswerSurvey(c) => {
                let rating = [5, 5, 4, 4, 3, 2, 1, 5, 4, 3][self.rng.range(0, 9) as usize];
                let solved = self.rng.chance(80);
                let conv = &self.convs[c];
                let command = Command::AnswerSurvey(AnswerSurvey { conversation: conv.id.clone(), rating, solved });
                self.input(at, format!("w{n}"), conv.actor(), command)
            }
        }
    }
}

impl Conv {
    /// Who passes the contact's commands on: the contact itself (by its
    /// id), or the gateway that knows only its number.
    fn actor(&self) -> Actor {
        match &self.handle {
            Some(_) => Actor::system(GATEWAY),
            None => Actor::Contact(self.contact.clone()),
        }
    }
}

impl RandomDay {
    /// The conversation the next input is for (`Some(None)`: configuration
    /// or an agent's presence; `None`: no input left). A client that waits
    /// for its previous command on a conversation asks this before taking.
    pub fn next_conversation(&mut self) -> Option<Option<ConversationId>> {
        self.next_at()?;
        if self.setup.len() > 0 {
            return Some(None);
        }
        let Reverse((_, _, action)) = self.queue.peek()?;
        Some(match action {
            Action::Presence(..) => None,
            Action::Arrive(c)
            | Action::ContactWrites(c)
            | Action::AgentReplies(c, _)
            | Action::AgentCloses(c, _)
            | Action::AnswerSurvey(c) => Some(self.convs[*c].id.clone()),
        })
    }
}

impl Driver for RandomDay {
    fn next_at(&mut self) -> Option<Timestamp> {
        if self.setup.len() > 0 {
            return Some(self.start);
        }
        while let Some(Reverse((at, _, action))) = self.queue.peek() {
            if self.still_valid(action) {
                return Some(*at);
            }
            self.queue.pop();
        }
        None
    }

    fn take(&mut self) -> Option<Input> {
        if let Some(input) = self.setup.next() {
            return Some(input);
        }
        let Reverse((at, _, action)) = self.queue.pop()?;
        Some(self.act(at, action))
    }

    fn observe(&mut self, records: &[Record]) {
        for record in records {
            let Record::Conversation { conversation, record, .. } = record else {
                continue;
            };
            let Some(&c) = self.conv_index.get(conversation) else {
                continue;
            };
            match &record.event {
                ConversationEvent::AgentAssigned { agent, .. } => {
                    let a = self.agent_index[agent];
                    self.convs[c].assignee = Some(a);
                    if self.convs[c].awaiting_agent && !self.convs[c].reply_pending {
                        self.convs[c].reply_pending = true;
                        let delay = self.reply_delay();
                        self.schedule(record.at.plus_secs(delay), Action::AgentReplies(c, a));
                    }
                }
                ConversationEvent::ConversationTransferred { .. } => {
                    self.convs[c].assignee = None;
                    self.convs[c].reply_pending = false;
                }
                ConversationEvent::ConversationClosed { .. } => self.convs[c].closed = true,
                // Most contacts who get the survey answer it a few minutes later.
                ConversationEvent::MessageSent { author: Author::System(Trigger::Survey), .. }
                    if self.rng.chance(60) =>
                {
                    let delay = self.rng.range(30, 900);
                    self.schedule(record.at.plus_secs(delay), Action::AnswerSurvey(c));
                }
                _ => {}
            }
        }
    }
}
