//! Termination signals (SIGINT, SIGTERM, SIGHUP) turned into messages: blocked in every thread
//! and waited for by one, so long-running commands can tear down cleanly instead of dying
//! half-way. Child processes start with the signals unblocked (the standard library resets the
//! mask when it spawns them).

use std::sync::mpsc::{self, Receiver};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

use crate::error::{Error, Result};

/// Blocks the termination signals and returns a channel that receives each one. Call before any
/// other thread is started: threads inherit the mask of the thread that starts them.
pub fn termination_channel() -> Result<Receiver<Signal>> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| Error::invalid("block termination signals", e.to_string()))?;
    let (send, receive) = mpsc::channel();
    std::thread::Builder::new()
        .name("pgfork-signals".into())
        .spawn(move || {
            while let Ok(signal) = set.wait() {
                if send.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Error::invalid("signal thread", e.to_string()))?;
    Ok(receive)
}
