//! The engine's metrics, in the Prometheus text exposition format (0.0.4):
//! counters, gauges and histograms with labels, kept in memory and rendered
//! on a scrape (`GET /metrics`). Labels never name an account or a person:
//! command types, outcomes, rejection codes, partitions, projections.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// The buckets (seconds) of the latency histograms.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Every metric convo exposes, with its type and help.
pub const CATALOG: [(&str, &str, &str); 17] = [
    (
        "convo_requests_total",
        "counter",
        "Requests the engine took, by transport (nats, http), kind (command, read) and outcome (a command's outcome, authorized, refused at the door, invalid).",
    ),
    (
        "convo_door_refusals_total",
        "counter",
        "Requests refused at the door, by the rule (credential, tenant, scope, role, network, reply_subject, engine_only) or what was wrong (malformed_json, invalid, too_large, unknown_command, subject_mismatch).",
    ),
    ("convo_http_responses_total", "counter", "Responses of the HTTP gateway, by route and status."),
    (
        "convo_commands_total",
        "counter",
        "Commands answered, by type and outcome (committed, nothing, duplicate, rejected, overloaded, unavailable).",
    ),
    ("convo_rejections_total", "counter", "Commands rejected by a rule, by code."),
    (
        "convo_append_seconds",
        "histogram",
        "How long a write to the stream took (one append or one atomic batch), acknowledgement included.",
    ),
    ("convo_conflicts_total", "counter", "Appends refused because another writer got there first, by partition."),
    ("convo_batches_total", "counter", "Atomic batches group commit wrote to the stream, by partition."),
    ("convo_batched_commits_total", "counter", "Commits that went to the stream in atomic batches, by partition."),
    (
        "convo_batch_fallbacks_total",
        "counter",
        "Batches that failed (refused whole, or their outcome unknown) and were appended again one by one, by partition.",
    ),
    ("convo_partition_queue_depth", "gauge", "Requests waiting for their partition, by partition."),
    ("convo_appends_in_flight", "gauge", "Appends and loads under way, by partition."),
    ("convo_open_conversations", "gauge", "Open conversations held in memory, by partition."),
    ("convo_armed_timers", "gauge", "Conversation deadlines armed, by partition."),
    ("convo_stream_last_sequence", "gauge", "The stream's newest sequence."),
    ("convo_projection_lag", "gauge", "Commits of the stream a projection has not taken in yet, by projection."),
    ("convo_webhook_attempts_total", "counter", "Webhook delivery attempts, by outcome (delivered, retrying, dead)."),
];

type Labels = Vec<(String, String)>;

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Values {
    counters: BTreeMap<(&'static str, Labels), u64>,
    gauges: BTreeMap<(&'static str, Labels), f64>,
    histograms: BTreeMap<(&'static str, Labels), Histogram>,
}

/// The registry, shared by whoever measures.
#[derive(Debug, Default)]
pub struct Metrics(Mutex<Values>);

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

impl Metrics {
    fn values(&self) -> std::sync::MutexGuard<'_, Values> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)], by: u64) {
        *self.values().counters.entry((name, labels(pairs))).or_default() += by;
    }

    /// Sets a counter kept elsewhere (monotonic there) to its current value.
    pub fn set_counter(&self, name: &'static str, pairs: &[(&str, &str)], value: u64) {
        self.values().counters.insert((name, labels(pairs)), value);
    }

    pub fn set(&self, name: &'static str, pairs: &[(&str, &str)], value: f64) {
        self.values().gauges.insert((name, labels(pairs)), value);
    }

    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], took: Duration) {
        let seconds = took.as_secs_f64();
        let mut values = self.values();
        let h = values.histograms.entry((name, labels(pairs))).or_default();
        for (slot, bound) in h.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *slot += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The text exposition of every metric (those with no value yet: their HELP and TYPE).
    pub fn render(&self) -> String {
        let values = self.values();
        let mut out = String::new();
        let text = |labels: &Labels, extra: Option<(&str, String)>| {
            let mut parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            if let Some((k, v)) = extra {
                parts.push(format!("{k}=\"{v}\""));
            }
            if parts.is_empty() { String::new() } else { format!("{{{}}}", parts.join(",")) }
        };
        for (name, kind, help) in CATALOG {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            match kind {
                "counter" => {
                    for ((_, l), v) in values.counters.iter().filter(|((n, _), _)| *n == name) {
                        let _ = writeln!(out, "{name}{} {v}", text(l, None));
                    }
                }
                "gauge" => {
                    for ((_, l), v) in values.gauges.iter().filter(|((n, _), _)| *n == name) {
                        let _ = writeln!(out, "{name}{} {v}", text(l, None));
                    }
                }
                _ => {
                    for ((_, l), h) in values.histograms.iter().filter(|((n, _), _)| *n == name) {
                        for (bound, count) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                            let _ = writeln!(out, "{name}_bucket{} {count}", text(l, Some(("le", bound.to_string()))));
                        }
                        let _ = writeln!(out, "{name}_bucket{} {}", text(l, Some(("le", "+Inf".into()))), h.count);
                        let _ = writeln!(out, "{name}_sum{} {}", text(l, None), h.sum);
                        let _ = writeln!(out, "{name}_count{} {}", text(l, None), h.count);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let m = Metrics::default();
        m.inc("convo_commands_total", &[("type", "close"), ("outcome", "committed")], 2);
        m.set("convo_open_conversations", &[("partition", "0")], 3.0);
        m.observe("convo_append_seconds", &[], Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("convo_commands_total{type=\"close\",outcome=\"committed\"} 2"), "{text}");
        assert!(text.contains("convo_append_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("convo_append_seconds_bucket{le=\"0.0025\"} 0"), "{text}");
        assert!(text.contains("convo_append_seconds_count 1"), "{text}");
    }
}
