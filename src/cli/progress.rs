//! The terminal side of [`crate::progress::Progress`]: an indicatif bar on standard error for long
//! copies (with rate and ETA; drawn only on a terminal, coloured unless `NO_COLOR` is set, and
//! never for a command printing JSON), notices printed as they come.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::Progress;

/// Set when the command prints a report for a program (`--json`): no bars then.
static HIDDEN: AtomicBool = AtomicBool::new(false);

/// Hides every progress bar of this process (notes are still printed).
pub fn hide_bars() {
    HIDDEN.store(true, Ordering::Relaxed);
}

/// Draws a byte progress bar while a task runs; prints notes to standard error.
#[derive(Default)]
pub struct TerminalProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress for TerminalProgress {
    fn begin(&self, task: &str, total_bytes: u64) {
        // On standard error, drawn only on a terminal; styled only where colours are enabled.
        let bar = if HIDDEN.load(Ordering::Relaxed) { ProgressBar::hidden() } else { ProgressBar::new(total_bytes) };
        bar.set_length(total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>7} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_message(task.to_string());
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = self.bar.lock().expect("progress lock").as_ref() {
            bar.inc(bytes);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.lock().expect("progress lock").take() {
            bar.finish_and_clear();
        }
    }

    fn note(&self, message: &str) {
        match self.bar.lock().expect("progress lock").as_ref() {
            Some(bar) => bar.println(format!("pgfork: {message}")),
            None => eprintln!("pgfork: {message}"),
        }
    }
}
