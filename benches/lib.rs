//! Workloads shared by convo's benchmarks.
//!
//! [`domain_mix`] builds a realistic stream of conversation commands for the
//! pure-domain benchmark: each conversation opens with the welcome message, is
//! assigned, answered, goes back and forth, gets a field and a label, fires its
//! timers and is closed, the conversations interleaved as they are in traffic.
//! The account has automations defined (one runs in every conversation).
//! A test checks that every command of the mix is accepted, so the benchmark
//! measures real decisions rather than refusals.

use convo_domain::{
    AccountId, Actor, Catalog, Command, CommandEnvelope, CommandId, Context, Conversation, ConversationId, Floor,
    Timestamp,
};
use serde_json::json;

/// The configuration the mix runs against.
pub fn catalog() -> Catalog {
    let account = AccountId::new("bench").expect("valid");
    let mut catalog = Catalog::new(account.clone());
    let setup = [
        json!({"type":"configure_account","name":"Bench","typifications":[{"id":"venta","name":"Venta"},{"id":"inactividad","name":"I"},{"id":"transferencia","name":"T"}],
            "labels":["vip"],"canned_responses":[{"shortcode":"hola","text":"Hola {contact_name}, soy {agent_name}"}]}),
        json!({"type":"define_client","id":"acme","name":"Acme","code":"1","sla_optimal_secs":60,"sla_low_secs":180,"max_inactivity_secs":300,"inactivity_attempts":2}),
        json!({"type":"define_project","id":"p","client":"acme","name":"P"}),
        json!({"type":"define_schedule","id":"s","name":"S","time_zone":"America/Bogota","week":{"mon":["00:00-24:00"],"tue":["00:00-24:00"]}}),
        json!({"type":"define_channel","id":"wa","kind":"whatsapp","external_id":"1","messages":{"welcome":{"enabled":true,"text":"Hola {contact_name}, bienvenido a {company}"},"closing":{"enabled":true,"text":"Gracias"}}}),
        json!({"type":"define_user","id":"sup","name":"Sup","email":"s@x.co","role":"supervisor"}),
        json!({"type":"define_user","id":"ana","name":"Ana","email":"a@x.co","role":"agent","max_concurrent_conversations":1000}),
        json!({"type":"define_campaign","id":"c","client":"acme","project":"p","name":"C","channels":["wa"],"schedule":"s","out_of_hours":{"action":"enqueue"},
            "inactivity_typification":"inactividad","transfer_typification":"transferencia","closing_typifications":["venta"],
            "dynamic_fields":[{"name":"order"}],"agents":["ana","sup"]}),
        // Automations defined, as a contact center has them: one on every
        // contact message (a pattern), one on the label it adds.
        json!({"type":"define_automation","id":"buyers","name":"Buyers","on":"message_received",
            "conditions":[{"text_matches":"compra|precio"},{"lacks_label":"vip"}],"actions":[{"add_label":"vip"}]}),
        json!({"type":"define_automation","id":"vip-order","name":"VIP order","on":"label_added",
            "conditions":[{"label":"vip"}],"actions":[{"set_field":{"field":"order","value":"vip"}}]}),
    ];
    for (n, value) in setup.into_iter().enumerate() {
        let envelope = CommandEnvelope {
            id: CommandId::new(&format!("setup-{n}")).expect("valid"),
            account: account.clone(),
            actor: Actor::system("bench"),
            command: Command::from_json(value).expect("valid setup"),
        };
        let start = Timestamp::parse_rfc3339("2026-03-02T00:00:00Z").expect("valid");
        for record in catalog.decide(&envelope, start, &Floor::default()).expect("valid setup").into_events() {
            catalog.evolve(&record);
        }
    }
    catalog
}

/// One command of the mix: which conversation, the command, its time.
pub type Step = (usize, CommandEnvelope, Timestamp);

/// The command stream for `conversations` interleaved conversations.
pub fn domain_mix(conversations: usize) -> Vec<Step> {
    let account = AccountId::new("bench").expect("valid");
    let start = Timestamp::parse_rfc3339("2026-03-02T08:00:00Z").expect("valid");
    let ana = Actor::User { id: "ana".parse().expect("valid"), ip: None };
    let sup = Actor::User { id: "sup".parse().expect("valid"), ip: None };
    // (offset in seconds, actor, command) for one conversation.
    let script = |c: usize| -> Vec<(u64, Actor, serde_json::Value)> {
        let conv = format!("k{c}");
        let contact = format!("p{c}");
        let contact_actor = Actor::Contact(contact.parse().expect("valid"));
        let receive = |text: &str| json!({"type":"receive_message","conversation":conv,"contact":contact,"channel":"wa","text":text});
        vec![
            (
                0,
                contact_actor.clone(),
                json!({"type":"receive_message","conversation":conv,"contact":contact,"channel":"wa","text":"hola","contact_name":"Ana"}),
            ),
            (5, sup.clone(), json!({"type":"assign","conversation":conv,"agent":"ana"})),
            (40, ana.clone(), json!({"type":"send_message","conversation":conv,"text":"/hola"})),
            (70, contact_actor.clone(), receive("quiero comprar")),
            (80, contact_actor.clone(), receive("el plan anual")),
            (150, Actor::system("timer"), json!({"type":"tick","conversation":conv})),
            (160, ana.clone(), json!({"type":"send_message","conversation":conv,"text":"claro, ya lo registro"})),
            (170, ana.clone(), json!({"type":"set_field","conversation":conv,"field":"order","value":"A-1"})),
            (175, ana.clone(), json!({"type":"add_label","conversation":conv,"label":"vip"})),
            (200, contact_actor, receive("gracias")),
            (230, ana.clone(), json!({"type":"send_message","conversation":conv,"text":"a ti"})),
            (240, ana.clone(), json!({"type":"close","conversation":conv,"typification":"venta"})),
        ]
    };
    let mut steps = Vec::new();
    let scripts: Vec<_> = (0..conversations).map(script).collect();
    let len = scripts.first().map_or(0, Vec::len);
    for i in 0..len {
        for (c, s) in scripts.iter().enumerate() {
            let (offset, actor, value) = s[i].clone();
            let envelope = CommandEnvelope {
                id: CommandId::new(&format!("k{c}-{i}")).expect("valid"),
                account: account.clone(),
                actor,
                command: Command::from_json(value).expect("valid mix"),
            };
            steps.push((c, envelope, start.plus_secs(offset + c as u64 % 600)));
        }
    }
    steps
}

/// Fresh conversation states for the mix.
pub fn states(conversations: usize) -> Vec<Conversation> {
    (0..conversations).map(|c| Conversation::new(ConversationId::new(&format!("k{c}")).expect("valid"))).collect()
}

/// Decides and applies every step; returns how many events were recorded.
pub fn run_mix(catalog: &Catalog, floor: &Floor, states: &mut [Conversation], steps: &[Step]) -> usize {
    let ctx = Context::bare(catalog, floor);
    let mut events = 0;
    for (c, envelope, now) in steps {
        let state = &mut states[*c];
        if let Ok(decision) = state.decide(ctx, envelope, *now) {
            for record in decision.events() {
                state.evolve(record);
                events += 1;
            }
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_of_the_mix_is_accepted() {
        let catalog = catalog();
        let floor = Floor::default();
        let steps = domain_mix(50);
        let mut states = states(50);
        let ctx = Context::bare(&catalog, &floor);
        for (c, envelope, now) in &steps {
            let decision = states[*c].decide(ctx, envelope, *now).unwrap_or_else(|r| panic!("{}: {r}", envelope.id));
            for record in decision.events() {
                states[*c].evolve(record);
            }
        }
        assert!(states.iter().all(|s| s.status == convo_domain::conversation::Status::Closed));
    }
}
