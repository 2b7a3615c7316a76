//! The persisted journal cursor.

use std::io::Write as _;
use std::path::PathBuf;

/// Where the cursor of the last journal entry read is kept. Writes are
/// atomic: a temporary file beside it is written, fsynced and renamed over
/// it, so a crash leaves either the old or the new cursor, never a torn one.
///
/// ```
/// use tapio_collector_systemd::journal::CursorStore;
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = CursorStore::new(Some(dir.path().join("state/journal.cursor")));
/// assert_eq!(store.load().unwrap(), None);
/// store.save("s=1;i=2").unwrap();
/// assert_eq!(store.load().unwrap().as_deref(), Some("s=1;i=2"));
/// ```
#[derive(Debug, Clone)]
pub struct CursorStore {
    path: Option<PathBuf>,
}

impl CursorStore {
    /// A store at `path`; `None` keeps nothing.
    pub fn new(path: Option<PathBuf>) -> Self {
        Self { path }
    }

    /// The cursor file, for messages.
    pub fn describe(&self) -> String {
        self.path.as_ref().map_or_else(
            || "no cursor file".to_string(),
            |p| format!("cursor file {}", p.display()),
        )
    }

    /// The saved cursor; `None` if there is no file (or it is empty).
    pub fn load(&self) -> std::io::Result<Option<String>> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let cursor = text.trim();
                Ok((!cursor.is_empty()).then(|| cursor.to_string()))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Replace the saved cursor (creating the directory if needed).
    pub fn save(&self, cursor: &str) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(cursor.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}
