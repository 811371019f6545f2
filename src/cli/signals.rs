//! SIGINT and SIGTERM during a transfer. The first cancels it: the
//! pipeline stops at its next step and removes its partial files, and a
//! read waiting for input that may never come is woken at once. A second
//! signal removes every partial file still open and exits with 130
//! without waiting for the pipeline (stuck on a hung file system, say).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::error::{Error, Result};
use crate::pipeline::progress::Progress;

/// Starts watching for the signals; returns the descriptor that becomes
/// readable on the first one (for [`crate::source::Source::wake_on`]).
pub(crate) fn cancel_on_signals(progress: &Progress) -> Result<Arc<OwnedFd>> {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::from(e).with_message("cannot watch for signals"))?;
    let (wake_r, wake_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::from(std::io::Error::from(e)).with_message("cannot create a pipe"))?;
    let flag = progress.cancel_flag();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for _ in signals.forever() {
                seen += 1;
                if seen == 1 {
                    flag.store(true, Ordering::SeqCst);
                    let _ = rustix::io::write(&wake_w, b"!");
                } else {
                    crate::sink::partial::remove_all_live();
                    std::process::exit(130);
                }
            }
        })
        .map_err(|e| Error::from(e).with_message("cannot start the signal thread"))?;
    Ok(Arc::new(wake_r))
}
