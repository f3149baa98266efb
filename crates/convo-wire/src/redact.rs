//! The accounts' redaction rules (SPEC §9): text matching an account's
//! `regex_rules` marked `redact` is masked in what leaves for integrators —
//! the JSON feeds, the NATS JSON stream and webhook bodies. The stream
//! itself keeps the original (it is the record).
//!
//! The engine keeps [`Redactions`] current from the catalogs it applies
//! (the rules in force when an event is served or delivered are the ones
//! used); readers share it.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use convo_domain::AccountId;
use convo_domain::config::RegexRule;

/// The fields that hold free text people wrote (messages, field values,
/// names, comments, a contact's handles and attributes): the only ones
/// redaction rewrites.
pub const FREE_TEXT_FIELDS: [&str; 10] =
    ["text", "value", "comment", "comments", "contact_name", "name", "description", "caption", "handle", "attributes"];

/// A contact's number as people who may not see it get it: all but the last
/// four characters masked (`********2233`), for campaigns that do not show
/// contact numbers.
pub fn mask_contact(contact: &str) -> String {
    let keep = contact.chars().count().saturating_sub(4);
    contact.chars().enumerate().map(|(i, c)| if i < keep { '*' } else { c }).collect()
}

/// Compiles a pattern within the catalog's limit
/// ([`convo_domain::config::REGEX_BYTES_MAX`]; the regex crate's matching is
/// linear-time), or says why not.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern).size_limit(convo_domain::config::REGEX_BYTES_MAX).build().map_err(|e| e.to_string())
}

/// One account's compiled rules.
#[derive(Debug, Clone, Default)]
pub struct Rules(Vec<(String, Regex)>);

impl Rules {
    /// The rules marked `redact` (a pattern that does not compile is skipped:
    /// the catalog refuses those when they are defined).
    pub fn from_catalog(rules: &[RegexRule]) -> Self {
        Self(
            rules
                .iter()
                .filter(|r| r.redact)
                .filter_map(|r| Some((r.name.clone(), compile(&r.pattern).ok()?)))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Masks every match in the free text of `value` ([`FREE_TEXT_FIELDS`], at
    /// any depth) as `[redacted:<rule>]`. Ids, types, times and actors stay as
    /// they are, so redacted events still meet their schema and correlate.
    pub fn apply(&self, value: &mut Value) {
        if self.0.is_empty() {
            return;
        }
        match value {
            Value::Array(items) => items.iter_mut().for_each(|v| self.apply(v)),
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if FREE_TEXT_FIELDS.contains(&key.as_str()) {
                        self.mask(v);
                    } else {
                        self.apply(v);
                    }
                }
            }
            _ => {}
        }
    }

    fn mask(&self, value: &mut Value) {
        match value {
            // A sealed value is masked once opened, never in its sealed form
            // (a rule matching inside it would break it).
            Value::String(text) if crate::personal::is_sealed(text) => {}
            Value::String(text) => {
                for (name, regex) in &self.0 {
                    if regex.is_match(text) {
                        *text = regex.replace_all(text, format!("[redacted:{name}]").as_str()).into_owned();
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.mask(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.mask(v)),
            _ => {}
        }
    }

    /// The commit's events as CloudEvents ([`crate::Commit::cloud_events`]),
    /// their `data` masked: what every feed and webhook sends.
    pub fn cloud_events(&self, commit: &crate::Commit, prefix: &str, stream_seq: u64) -> Vec<Value> {
        let mut events = commit.cloud_events(prefix, stream_seq);
        for event in &mut events {
            if let Some(data) = event.get_mut("data") {
                self.apply(data);
            }
        }
        events
    }

    /// The commit's events as CloudEvent JSON, masked: the same bytes as
    /// serializing [`Rules::cloud_events`]. Without rules (most accounts) they
    /// are written straight from the typed commit
    /// ([`crate::Commit::cloud_events_json`]).
    pub fn cloud_events_json(
        &self,
        commit: &crate::Commit,
        prefix: &str,
        stream_seq: u64,
    ) -> Vec<crate::cloud_json::CloudEventJson> {
        if self.is_empty() {
            return commit.cloud_events_json(prefix, stream_seq);
        }
        let events = self.cloud_events(commit, prefix, stream_seq);
        commit
            .events
            .iter()
            .zip(events)
            .map(|(e, event)| crate::cloud_json::CloudEventJson {
                id: event["id"].as_str().unwrap_or_default().to_owned(),
                event_type: e.event.type_name(),
                json: serde_json::to_vec(&event).expect("JSON values serialize"),
            })
            .collect()
    }
}

/// Every account's rules, as the engine last applied its catalog.
#[derive(Debug, Default)]
pub struct Redactions(RwLock<HashMap<AccountId, Rules>>, AtomicBool);

impl Redactions {
    /// Every account's rules are known (the engine has recovered).
    pub fn mark_ready(&self) {
        self.1.store(true, Ordering::Release);
    }

    /// Whether [`Redactions::mark_ready`] was called: nothing is served before.
    pub fn is_ready(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    pub fn set(&self, account: &AccountId, rules: &[RegexRule]) {
        let compiled = Rules::from_catalog(rules);
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if compiled.is_empty() {
            map.remove(account);
        } else {
            map.insert(account.clone(), compiled);
        }
    }

    pub fn of(&self, account: &AccountId) -> Rules {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(account).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matching_text_is_masked_and_the_rest_kept() {
        let rules = Rules::from_catalog(&[
            RegexRule { name: "card".into(), pattern: r"\b\d{4}(?:[ -]?\d{4}){3}\b".into(), redact: true },
            RegexRule { name: "order".into(), pattern: r"A-\d+".into(), redact: false },
        ]);
        let mut v =
            json!({"type": "message_received", "text": "mi tarjeta 4111 1111 1111 1111 y pedido A-1", "n": 4111});
        rules.apply(&mut v);
        assert_eq!(v["text"], "mi tarjeta [redacted:card] y pedido A-1");
        assert_eq!(v["n"], 4111);
        assert!(compile("(").is_err());
    }

    #[test]
    fn a_contacts_handles_and_attributes_are_free_text() {
        let rules = Rules::from_catalog(&[RegexRule { name: "id".into(), pattern: r"\d{6,}".into(), redact: true }]);
        let mut v = json!({"type": "contact_defined", "id": "c-1", "name": "Camila",
            "identities": [{"channel": "wa", "handle": "+573001112233"}],
            "attributes": {"document": "CC 1020304050", "since": "2024"}});
        rules.apply(&mut v);
        assert_eq!(v["identities"][0]["handle"], "+[redacted:id]");
        assert_eq!(v["attributes"]["document"], "CC [redacted:id]");
        assert_eq!((v["attributes"]["since"].as_str(), v["id"].as_str()), (Some("2024"), Some("c-1")));
    }
}
