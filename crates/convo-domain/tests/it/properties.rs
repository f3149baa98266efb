//! Random command sequences against one account: no panic, every event's
//! sequence follows its predecessor, and replaying a conversation's events
//! rebuilds exactly the state `decide` saw.

use std::collections::BTreeMap;

use convo_domain::{
    AccountId, Actor, AgentPresence, Catalog, Command, CommandEnvelope, CommandId, Context, Conversation,
    ConversationId, Decision, Floor, Recorded, Target, Timestamp, UserId,
};
use proptest::prelude::*;
use serde_json::json;

fn command(value: serde_json::Value) -> Command {
    Command::from_json(value).expect("a valid test command")
}

fn setup() -> Vec<Command> {
    vec![
        command(json!({"type":"configure_account","name":"Acme","auto_resolve_after_days":1,
            "typifications":[{"id":"venta","name":"Venta"},{"id":"inactividad","name":"Inactividad"},{"id":"transferencia","name":"T"}],
            "labels":["vip"],"canned_responses":[{"shortcode":"hola","text":"Hola {contact_name}"}]})),
        command(
            json!({"type":"define_client","id":"acme","name":"Acme","code":"1","sla_optimal_secs":60,"sla_low_secs":180,"max_inactivity_secs":300,"inactivity_attempts":2}),
        ),
        command(json!({"type":"define_project","id":"p","client":"acme","name":"P"})),
        command(
            json!({"type":"define_schedule","id":"s","name":"S","time_zone":"America/Bogota","week":{"mon":["08:00-18:00"],"tue":["08:00-18:00"],"wed":["08:00-18:00"]}}),
        ),
        command(
            json!({"type":"define_channel","id":"wa","kind":"whatsapp","external_id":"1","messages":{"welcome":{"enabled":true,"text":"Hola {contact_name}"},"inactivity_alert":{"enabled":true,"text":"¿Sigues?"},"survey":{"enabled":true,"text":"Califica"}}}),
        ),
        command(json!({"type":"define_channel","id":"web","kind":"webchat","external_id":"2"})),
        command(
            json!({"type":"define_user","id":"ana","name":"Ana","email":"a@x.co","role":"agent","max_concurrent_conversations":2}),
        ),
        command(
            json!({"type":"define_user","id":"beto","name":"Beto","email":"b@x.co","role":"agent","max_concurrent_conversations":2}),
        ),
        command(json!({"type":"define_user","id":"sara","name":"Sara","email":"s@x.co","role":"supervisor"})),
        command(
            json!({"type":"define_campaign","id":"c1","client":"acme","project":"p","name":"C1","channels":["wa"],"schedule":"s","out_of_hours":{"action":"enqueue"},
            "inactivity_typification":"inactividad","transfer_typification":"transferencia","closing_typifications":["venta"],
            "permissions":{"allow_agent_transfer":true},"dynamic_fields":[{"name":"order","mandatory":true}],"agents":["ana","beto","sara"]}),
        ),
        command(
            json!({"type":"define_campaign","id":"c2","client":"acme","project":"p","name":"C2","channels":["web"],"schedule":"s","out_of_hours":{"action":"close"},
            "inactivity_typification":"inactividad","transfer_typification":"transferencia","closing_typifications":["venta"],"agents":["beto"]}),
        ),
    ]
}

const CONVERSATIONS: usize = 3;
const USERS: [&str; 3] = ["ana", "beto", "sara"];

/// A random step: advance the clock, then one command.
#[derive(Debug, Clone)]
struct Step {
    advance_secs: u64,
    conversation: usize,
    kind: u8,
    user: usize,
    pick: u8,
    repeat_id: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (0u64..400, 0..CONVERSATIONS, 0u8..14, 0..USERS.len(), any::<u8>(), proptest::bool::weighted(0.1)).prop_map(
        |(advance_secs, conversation, kind, user, pick, repeat_id)| Step {
            advance_secs,
            conversation,
            kind,
            user,
            pick,
            repeat_id,
        },
    )
}

fn make(step: &Step) -> (Actor, Command) {
    let conv = format!("k{}", step.conversation);
    let contact = format!("p{}", step.conversation);
    let user = USERS[step.user];
    let user_actor = Actor::User { id: user.parse().unwrap(), ip: None };
    let contact_actor = Actor::Contact(contact.parse().unwrap());
    let channel = if step.pick.is_multiple_of(5) { "web" } else { "wa" };
    match step.kind {
        0 | 1 => (
            contact_actor,
            command(
                json!({"type":"receive_message","conversation":conv,"contact":contact,"channel":channel,"text":"hola","contact_name":"Ana"}),
            ),
        ),
        2 | 3 => {
            let text = if step.pick.is_multiple_of(7) { "/hola" } else { "respuesta" };
            (user_actor, command(json!({"type":"send_message","conversation":conv,"text":text})))
        }
        4 => (
            Actor::system("routing"),
            command(json!({"type":"assign","conversation":conv,"agent":USERS[step.pick as usize % 3]})),
        ),
        5 => {
            let to = if step.pick.is_multiple_of(2) {
                json!({"agent": USERS[step.pick as usize % 3]})
            } else {
                json!({"campaign": "c2"})
            };
            (user_actor, command(json!({"type":"transfer","conversation":conv,"to":to})))
        }
        6 => (user_actor, command(json!({"type":"set_field","conversation":conv,"field":"order","value":"A1"}))),
        7 => (user_actor, command(json!({"type":"add_label","conversation":conv,"label":"vip"}))),
        8 => (user_actor, command(json!({"type":"close","conversation":conv,"typification":"venta"}))),
        9 => (
            contact_actor,
            command(json!({"type":"answer_survey","conversation":conv,"rating":step.pick % 7,"solved":true})),
        ),
        10 => (
            Actor::system("bot"),
            command(json!({"type":"send_bot_message","conversation":conv,"bot":"faq","text":"hola"})),
        ),
        11 => {
            let state = ["available", "break", "offline"][step.pick as usize % 3];
            (user_actor, command(json!({"type":"set_agent_state","agent":USERS[step.pick as usize % 3],"state":state})))
        }
        12 => (
            user_actor,
            command(
                json!({"type":"start_outbound","conversation":conv,"contact":contact,"channel":"wa","text":"hola"}),
            ),
        ),
        _ => (Actor::system("timer"), command(json!({"type":"tick","conversation":conv}))),
    }
}

fn check_sequence<E>(records: &[Recorded<E>], before: u64) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, before + 1 + i as u64, "events follow their predecessor");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_keep_the_aggregates_consistent(steps in proptest::collection::vec(step(), 1..80)) {
        let account = AccountId::new("acme").unwrap();
        let mut catalog = Catalog::new(account.clone());
        let mut floor = Floor::default();
        let mut now = Timestamp::parse_rfc3339("2026-03-02T13:00:00Z").unwrap();
        for (n, c) in setup().into_iter().enumerate() {
            let env = CommandEnvelope { id: CommandId::new(&format!("s{n}")).unwrap(), account: account.clone(), actor: Actor::system("setup"), command: c };
            for r in catalog.decide(&env, now, &floor).expect("setup is valid").into_events() {
                catalog.evolve(&r);
            }
        }
        let mut conversations: BTreeMap<ConversationId, (Conversation, Vec<Recorded<convo_domain::ConversationEvent>>)> = BTreeMap::new();
        let mut agents: BTreeMap<UserId, AgentPresence> = BTreeMap::new();
        let mut last_id = CommandId::new("none").unwrap();
        for (n, s) in steps.iter().enumerate() {
            now = now.plus_secs(s.advance_secs);
            let (actor, cmd) = make(s);
            let id = if s.repeat_id { last_id.clone() } else { CommandId::new(&format!("c{n}")).unwrap() };
            last_id = id.clone();
            let env = CommandEnvelope { id, account: account.clone(), actor, command: cmd };
            match env.command.target() {
                Target::Conversation(cid) => {
                    let (state, log) = conversations.entry(cid.clone()).or_insert_with(|| (Conversation::new(cid.clone()), Vec::new()));
                    let before = state.clone();
                    let result = state.decide(Context::bare(&catalog, &floor), &env, now);
                    prop_assert_eq!(&before, &*state, "decide does not change the state");
                    if let Ok(decision) = result {
                        if let Decision::Duplicate { last_seq, .. } = decision {
                            prop_assert!(last_seq <= state.seq);
                        }
                        let events = decision.into_events();
                        check_sequence(&events, state.seq);
                        for r in events {
                            state.evolve(&r);
                            floor.apply_conversation(cid, &r);
                            log.push(r);
                        }
                    }
                    if let Some(deadline) = state.next_deadline() {
                        // A due timer is never in the past after a tick at its deadline.
                        let tick = CommandEnvelope { id: CommandId::new(&format!("t{n}")).unwrap(), account: account.clone(), actor: Actor::system("timer"),
                            command: command(json!({"type":"tick","conversation":cid.as_str()})) };
                        if deadline <= now {
                            let events = state.decide(Context::bare(&catalog, &floor), &tick, now).expect("ticks never fail on a live conversation").into_events();
                            check_sequence(&events, state.seq);
                            for r in events { state.evolve(&r); floor.apply_conversation(cid, &r); log.push(r); }
                            prop_assert!(state.next_deadline().is_none_or(|d| d > now), "a tick fires everything due");
                        }
                    }
                    let rebuilt = Conversation::replay(cid.clone(), log.iter());
                    prop_assert_eq!(&rebuilt, &*state, "replaying the events rebuilds the state");
                }
                Target::Agent(agent) => {
                    let presence = agents.entry(agent.clone()).or_insert_with(|| AgentPresence::new(agent.clone()));
                    if let Ok(decision) = presence.decide(&catalog, &env, now) {
                        let events = decision.into_events();
                        check_sequence(&events, presence.seq);
                        for r in events { presence.evolve(&r); floor.apply_agent(agent, &r); }
                    }
                }
                Target::Catalog | Target::Contacts => unreachable!("no configuration in the random steps"),
            }
        }
    }
}
