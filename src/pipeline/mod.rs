//! Pipelines: glue between sources, the OVA layer, codecs and sinks.

pub mod digests;
pub mod export;
pub mod import;
pub mod inspect;
pub mod package_head;
pub mod progress;
pub mod tickets;
