//! Volume sinks.
