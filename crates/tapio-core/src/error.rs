//! Showing errors whole.
//!
//! Errors in tapio name the step that failed and keep the cause in
//! [`source()`](std::error::Error::source), as `aya` and `libbpf-rs` do, so
//! that each message says one thing. [`ErrorChain`] prints an error with
//! every cause, for logs, health messages and the agent's status lines.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its causes, joined by `": "`.
///
/// ```
/// use tapio_core::ErrorChain;
/// use tapio_core::CollectorError;
///
/// let err = CollectorError::Io {
///     collector: "dns".into(),
///     context: "open /sys/fs/cgroup".into(),
///     source: std::io::Error::from(std::io::ErrorKind::NotFound),
/// };
/// assert_eq!(err.to_string(), "dns: open /sys/fs/cgroup");
/// assert_eq!(ErrorChain(&err).to_string(), "dns: open /sys/fs/cgroup: entity not found");
/// ```
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
