//! The generated description of every event type and version as postcard
//! encodes it, written to `schemas/postcard/` and checked against the code
//! by the drift test. (These describe the binary shape in the stream; the
//! JSON views have real JSON Schemas, [`crate::json_schema`].)
//!
//! The shapes are traced from the types themselves (serde-reflection), which
//! is exactly what postcard encodes: field order, variant indexes, primitive
//! widths. Each event gets `schemas/postcard/events/<type>.v<version>.json` holding its
//! variant index, its format and every named type it uses;
//! `schemas/postcard/commit.v<version>.json` describes the commit around them.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use serde_reflection::{ContainerFormat, Format, Registry, Samples, Tracer, TracerConfig, VariantFormat};

use convo_domain::schedule::{HoursRange, LocalDate, Zone};
use convo_domain::{
    AccountId, CampaignId, ChannelId, ClientId, CommandId, ContactId, ConversationId, ProjectId, ScheduleId, Timestamp,
    TypificationId, UserId,
};

use crate::json_schema::pretty;
use crate::{Commit, SCHEMA_VERSION};

/// Traces the registry of every named type in a commit.
pub fn registry() -> Result<Registry, String> {
    let mut tracer = Tracer::new(TracerConfig::default());
    let mut samples = Samples::new();
    let err = |e: serde_reflection::Error| e.to_string();
    // Types that validate when deserialized need a valid sample.
    macro_rules! sample {
        ($($value:expr),* $(,)?) => { $( tracer.trace_value(&mut samples, &$value).map_err(err)?; )* };
    }
    let id = "sample";
    sample!(
        AccountId::new(id).expect("valid"),
        ClientId::new(id).expect("valid"),
        ProjectId::new(id).expect("valid"),
        CampaignId::new(id).expect("valid"),
        ChannelId::new(id).expect("valid"),
        ConversationId::new(id).expect("valid"),
        ContactId::new(id).expect("valid"),
        UserId::new(id).expect("valid"),
        CommandId::new(id).expect("valid"),
        ScheduleId::new(id).expect("valid"),
        TypificationId::new(id).expect("valid"),
        convo_domain::KeyId::new(id).expect("valid"),
        convo_domain::IntegrationId::new(id).expect("valid"),
        convo_domain::WebhookId::new(id).expect("valid"),
        convo_domain::TeamId::new(id).expect("valid"),
        convo_domain::MacroId::new(id).expect("valid"),
        convo_domain::AutomationId::new(id).expect("valid"),
        convo_domain::config::WebhookSecret::parse("whsec_c2FtcGxlIHNhbXBsZSBzYW1wbGUgc2FtcGxl").expect("valid"),
        Timestamp::from_millis(0),
        Zone::default(),
        HoursRange::parse("08:00-12:00").expect("valid"),
        LocalDate::parse("2026-01-01").expect("valid"),
    );
    // Each enum is traced on its own until all its variants are seen; a new
    // enum in an event makes `registry()` name it here.
    macro_rules! enums {
        ($($t:ty),* $(,)?) => { $( tracer.trace_type::<$t>(&samples).map_err(err)?; )* };
    }
    enums!(
        std::net::IpAddr,
        convo_domain::Actor,
        crate::StreamRef,
        crate::Event,
        convo_domain::ConfigEvent,
        convo_domain::AgentEvent,
        convo_domain::ConversationEvent,
        convo_domain::ContactEvent,
        convo_domain::contact::AttributeKind,
        convo_domain::config::EntityRef,
        convo_domain::config::KeyHolder,
        convo_domain::config::ChannelKind,
        convo_domain::config::Role,
        convo_domain::config::OutOfHoursAction,
        convo_domain::config::SlaMode,
        convo_domain::automation::Action,
        convo_domain::automation::On,
        convo_domain::automation::Condition,
        convo_domain::command::TransferTarget,
        convo_domain::command::AttachmentKind,
        convo_domain::conversation::Direction,
        convo_domain::conversation::Author,
        convo_domain::conversation::Trigger,
        convo_domain::conversation::Threshold,
        convo_domain::conversation::SlaClass,
        convo_domain::conversation::CloseReason,
        convo_domain::conversation::Destination,
        Commit,
    );
    tracer.registry().map_err(err)
}

/// The files of `schemas/`, postcard descriptions and JSON Schemas (path
/// relative to it, contents).
pub fn files() -> Result<BTreeMap<String, String>, String> {
    let mut out: BTreeMap<String, String> =
        postcard_files()?.into_iter().map(|(rel, text)| (format!("postcard/{rel}"), text)).collect();
    out.extend(crate::json_schema::files().into_iter().map(|(rel, text)| (format!("json/{rel}"), text)));
    Ok(out)
}

/// The postcard descriptions (path relative to `schemas/postcard/`, contents).
fn postcard_files() -> Result<BTreeMap<String, String>, String> {
    let registry = registry()?;
    let mut out = BTreeMap::new();
    let version = SCHEMA_VERSION;
    for (family, enum_name) in [
        ("config", "ConfigEvent"),
        ("agent", "AgentEvent"),
        ("conversation", "ConversationEvent"),
        ("contact", "ContactEvent"),
    ] {
        let Some(ContainerFormat::Enum(variants)) = registry.get(enum_name) else {
            return Err(format!("{enum_name} is not an enum in the traced registry"));
        };
        for (index, variant) in variants {
            let mut used = BTreeSet::new();
            variant_refs(&variant.value, &mut used);
            let doc = json!({
                "event": variant.name,
                "family": family,
                "version": version,
                "variant_index": index,
                "encoding": "postcard; the commit's events are Event::<family>(this variant)",
                "format": variant.value,
                "types": closure(&registry, used),
            });
            out.insert(format!("events/{}.v{version}.json", variant.name), pretty(&doc));
        }
    }
    let mut used = BTreeSet::new();
    used.insert("Commit".to_string());
    let commit = json!({
        "name": "Commit",
        "version": version,
        "encoding": "postcard, in the payload of one NATS message; the version travels in the Convo-Schema header",
        "types": closure(&registry, used),
    });
    out.insert(format!("commit.v{version}.json"), pretty(&commit));
    Ok(out)
}

/// Every named type reachable from `roots`, with its format.
fn closure(registry: &Registry, roots: BTreeSet<String>) -> BTreeMap<String, &ContainerFormat> {
    let mut seen = BTreeMap::new();
    let mut todo: Vec<String> = roots.into_iter().collect();
    while let Some(name) = todo.pop() {
        if seen.contains_key(&name) {
            continue;
        }
        let Some(container) = registry.get(&name) else { continue };
        let mut refs = BTreeSet::new();
        match container {
            ContainerFormat::UnitStruct => {}
            ContainerFormat::NewTypeStruct(f) => format_refs(f, &mut refs),
            ContainerFormat::TupleStruct(fs) => fs.iter().for_each(|f| format_refs(f, &mut refs)),
            ContainerFormat::Struct(fields) => fields.iter().for_each(|f| format_refs(&f.value, &mut refs)),
            ContainerFormat::Enum(variants) => variants.values().for_each(|v| variant_refs(&v.value, &mut refs)),
        }
        seen.insert(name, container);
        todo.extend(refs);
    }
    seen
}

fn variant_refs(variant: &VariantFormat, out: &mut BTreeSet<String>) {
    match variant {
        VariantFormat::Unit | VariantFormat::Variable(_) => {}
        VariantFormat::NewType(f) => format_refs(f, out),
        VariantFormat::Tuple(fs) => fs.iter().for_each(|f| format_refs(f, out)),
        VariantFormat::Struct(fields) => fields.iter().for_each(|f| format_refs(&f.value, out)),
    }
}

fn format_refs(format: &Format, out: &mut BTreeSet<String>) {
    match format {
        Format::TypeName(name) => {
            out.insert(name.clone());
        }
        Format::Option(f) | Format::Seq(f) => format_refs(f, out),
        Format::Map { key, value } => {
            format_refs(key, out);
            format_refs(value, out);
        }
        Format::Tuple(fs) => fs.iter().for_each(|f| format_refs(f, out)),
        Format::TupleArray { content, .. } => format_refs(content, out),
        _ => {}
    }
}
