//! qcow2.
