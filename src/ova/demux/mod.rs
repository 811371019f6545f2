//! tar demux.
