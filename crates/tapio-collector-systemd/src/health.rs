//! Names of the collector's parts in its health message; the parts are
//! folded into one health cell by [`tapio_core::health::HealthParts`].

/// The D-Bus connection and systemd subscription.
pub(crate) const DBUS: &str = "dbus";
/// Reading the journal.
pub(crate) const JOURNAL: &str = "journal";
/// Journal files that cannot be read.
pub(crate) const JOURNAL_FILES: &str = "journal files";
/// No journal file to read at all.
pub(crate) const JOURNAL_DIRECTORY: &str = "journal directory";
/// Persisting the journal cursor.
pub(crate) const CURSOR: &str = "journal cursor";
