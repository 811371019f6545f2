//! Import/export glue.
