//! ovf.
