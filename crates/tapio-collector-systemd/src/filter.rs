//! Unit name filters (globs) and systemd's D-Bus object path escaping.

/// Unit type suffixes systemd knows.
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
];

/// Which units are watched: names and shell globs (`*`, `?`, `[a-z]`,
/// `[!x]`), matched like `systemctl list-units PATTERN` (fnmatch without
/// escapes). A pattern that is neither a glob nor has a unit type suffix
/// means a service (`kubelet` → `kubelet.service`). An empty filter
/// matches every unit.
///
/// ```
/// use tapio_collector_systemd::UnitFilter;
///
/// let f = UnitFilter::new(&["kubelet", "kube-*.service", "etcd.service"]).unwrap();
/// assert!(f.matches("kubelet.service"));
/// assert!(f.matches("kube-proxy.service"));
/// assert!(!f.matches("kubelet.socket"));
/// assert!(UnitFilter::new::<&str>(&[]).unwrap().matches("anything.mount"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitFilter {
    exact: Vec<String>,
    globs: Vec<String>,
}

/// A pattern in a unit filter is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The pattern is empty.
    #[error("empty unit pattern")]
    Empty,
    /// The pattern has a character unit names never contain.
    #[error("unit pattern {0:?} contains whitespace, '/' or a control character")]
    BadCharacter(String),
    /// A `[` is never closed.
    #[error("unit pattern {0:?} has an unclosed '['")]
    UnclosedClass(String),
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

impl UnitFilter {
    /// A filter of `patterns`.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, FilterError> {
        let mut filter = Self::default();
        for pattern in patterns {
            let p = pattern.as_ref().trim();
            if p.is_empty() {
                return Err(FilterError::Empty);
            }
            if p.chars()
                .any(|c| c.is_whitespace() || c == '/' || c.is_control())
            {
                return Err(FilterError::BadCharacter(p.to_string()));
            }
            if is_glob(p) {
                if p.matches('[').count() > p.matches(']').count() {
                    return Err(FilterError::UnclosedClass(p.to_string()));
                }
                filter.globs.push(p.to_string());
            } else {
                let has_type = p
                    .rsplit_once('.')
                    .is_some_and(|(_, suffix)| UNIT_TYPES.contains(&suffix));
                filter.exact.push(if has_type {
                    p.to_string()
                } else {
                    format!("{p}.service")
                });
            }
        }
        filter.exact.sort();
        filter.exact.dedup();
        Ok(filter)
    }

    /// Whether the filter matches every unit.
    pub fn is_all(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// Exact unit names, when the filter has no globs (and is not empty):
    /// they can be matched by the journal's indexes.
    pub fn exact_names(&self) -> Option<&[String]> {
        (self.globs.is_empty() && !self.exact.is_empty()).then_some(&self.exact)
    }

    /// Whether `unit` is watched.
    pub fn matches(&self, unit: &str) -> bool {
        self.is_all()
            || self
                .exact
                .binary_search_by(|e| e.as_str().cmp(unit))
                .is_ok()
            || self
                .globs
                .iter()
                .any(|g| glob_match(g.as_bytes(), unit.as_bytes()))
    }
}

/// fnmatch(3) without flags, on bytes: `*`, `?`, `[...]` with ranges and
/// `!`/`^` negation.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Position after the last `*` and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, text[t])
                        && matched
                    {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Match `c` against the class starting at `pattern[start] == b'['`;
/// returns (matched, index after the class), or `None` if unclosed.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        let lo = pattern[i];
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|&b| b != b']') {
            let hi = pattern[i + 2];
            if lo <= c && c <= hi {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// systemd's object path label escaping (`bus_label_escape`): every byte
/// that is not an ASCII letter or digit (and a leading digit) becomes `_xx`.
///
/// ```
/// use tapio_collector_systemd::filter::{unit_object_path, unit_from_object_path};
///
/// let path = unit_object_path("systemd-resolved.service");
/// assert_eq!(path, "/org/freedesktop/systemd1/unit/systemd_2dresolved_2eservice");
/// assert_eq!(unit_from_object_path(&path).as_deref(), Some("systemd-resolved.service"));
/// ```
pub fn unit_object_path(unit: &str) -> String {
    let mut out = String::from(UNIT_PATH_PREFIX);
    if unit.is_empty() {
        out.push('_');
        return out;
    }
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Object path prefix of unit objects.
pub const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// The unit name of a systemd unit object path (`bus_label_unescape`), or
/// `None` if `path` is not a unit path or not validly escaped.
pub fn unit_from_object_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_follow_fnmatch() {
        let cases = [
            ("kube*", "kubelet.service", true),
            ("kube*.service", "kube-proxy.service", true),
            ("kube*.service", "kube-proxy.socket", false),
            ("*", "", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[ck]ubelet.service", "kubelet.service", true),
            ("[!k]ubelet.service", "kubelet.service", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("*d*.service", "containerd.service", true),
            ("*.service", "x.service.d", false),
            ("etcd*", "etcd.service", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), want, "{p} vs {t}");
        }
    }

    #[test]
    fn filter_mangles_names_like_systemctl() {
        let f = UnitFilter::new(&["kubelet", "docker.socket", "crio*"]).unwrap();
        assert!(f.matches("kubelet.service"));
        assert!(!f.matches("kubelet"));
        assert!(f.matches("docker.socket"));
        assert!(f.matches("crio-wipe.service"));
        assert_eq!(f.exact_names(), None);
        let exact = UnitFilter::new(&["b.service", "a"]).unwrap();
        assert_eq!(
            exact.exact_names(),
            Some(&["a.service".to_string(), "b.service".to_string()][..])
        );
        assert_eq!(UnitFilter::new(&[" "]), Err(FilterError::Empty));
        assert!(matches!(
            UnitFilter::new(&["a b"]),
            Err(FilterError::BadCharacter(_))
        ));
        assert!(matches!(
            UnitFilter::new(&["a[b"]),
            Err(FilterError::UnclosedClass(_))
        ));
    }

    #[test]
    fn object_paths_round_trip() {
        for unit in [
            "kubelet.service",
            "systemd-resolved.service",
            "dev-sda1.device",
            "user@1000.service",
            "2fast.service",
            "",
        ] {
            let path = unit_object_path(unit);
            assert_eq!(
                unit_from_object_path(&path).as_deref(),
                Some(unit),
                "{path}"
            );
        }
        assert_eq!(
            unit_object_path("kubelet.service"),
            "/org/freedesktop/systemd1/unit/kubelet_2eservice"
        );
        assert_eq!(
            unit_object_path("2fast.service"),
            "/org/freedesktop/systemd1/unit/_32fast_2eservice"
        );
        assert_eq!(
            unit_from_object_path("/org/freedesktop/systemd1/job/4"),
            None
        );
        assert_eq!(
            unit_from_object_path("/org/freedesktop/systemd1/unit/bad_zz"),
            None
        );
    }
}
