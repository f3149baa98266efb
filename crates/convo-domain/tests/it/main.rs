//! convo-domain's integration tests: properties of the aggregates under random
//! command sequences, and the purity of the crate's source.

mod properties;
mod purity;
