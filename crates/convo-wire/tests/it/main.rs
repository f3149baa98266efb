//! convo-wire's tests. (The drift check of `schemas/` lives in convo-cli's
//! tests, beside the other generated contract files; the commits the fixtures
//! produce are encoded, viewed and validated in convo-sim's tests, where they
//! are made.)

use std::collections::BTreeSet;

/// The list of event types is the types' own: one JSON Schema per type, and
/// no type missing from the list (`convo tail --kind` and the AsyncAPI
/// document read it).
#[test]
fn the_event_types_are_the_types() {
    let from_schemas: BTreeSet<String> = convo_wire::json_schema::files()
        .keys()
        .filter_map(|k| k.strip_prefix("events/").and_then(|k| k.split('.').next()).map(str::to_owned))
        .collect();
    let listed: BTreeSet<String> = convo_wire::EVENT_TYPES.iter().map(|t| t.to_string()).collect();
    assert_eq!(from_schemas, listed);
}
