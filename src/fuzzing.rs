//! Entry points for `cargo fuzz` targets; not a stable API.
