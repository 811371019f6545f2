//! Byte sources.
