//! How long-running library work reports progress and notices without knowing about terminals:
//! the command line implements [`Progress`] with a progress bar, tests and scripts use [`Silent`].

/// Receives progress of one operation. Implementations must be cheap: `advance` is called from
/// worker threads for every file.
pub trait Progress: Send + Sync {
    /// A task of `total_bytes` begins (a copy, a scan).
    fn begin(&self, task: &str, total_bytes: u64);
    /// `bytes` more are done.
    fn advance(&self, bytes: u64);
    /// The current task ended.
    fn end(&self);
    /// Something the user should read now (a warning, a step taken).
    fn note(&self, message: &str);
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _task: &str, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
    fn note(&self, _message: &str) {}
}
