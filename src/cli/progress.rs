//! A progress bar on a terminal, fed from a [`Progress`] record by a
//! small thread so that the pipeline never blocks on drawing.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::pipeline::progress::Progress;

/// Draws progress until dropped; draws nothing when stderr is not a terminal.
#[derive(Debug)]
pub(crate) struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Bar {
    pub(crate) fn start(progress: Arc<Progress>, enabled: bool) -> Bar {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled || !std::io::stderr().is_terminal() {
            return Bar { stop, thread: None };
        }
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let bar = match progress.total() {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let style = if progress.total().is_some() {
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}"
            } else {
                "{spinner} {bytes} {bytes_per_sec} {msg}"
            };
            if let Ok(s) = ProgressStyle::with_template(style) {
                bar.set_style(s);
            }
            while !flag.load(Ordering::Relaxed) {
                bar.set_position(progress.bytes_read());
                bar.set_message(crate::names::printable(&progress.entry()).into_owned());
                std::thread::park_timeout(Duration::from_millis(200));
            }
            bar.finish_and_clear();
        });
        Bar {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
