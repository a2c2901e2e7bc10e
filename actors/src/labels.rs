//! Labels: `key = "value"` pairs a user or an outside scheduler puts on a
//! VM, and the `key=value` selectors that filter listings by them.
//!
//! Keys and values are short and plain (they end up in query strings and
//! tables), and a VM carries a bounded number of them.

use std::collections::BTreeMap;

use crate::error::SpecError;

pub type Labels = BTreeMap<String, String>;

/// Most labels on one VM.
pub const MAX_LABELS: usize = 32;
/// Longest key and longest value.
pub const MAX_LABEL_LEN: usize = 63;

fn plain(s: &str, extra: &[u8]) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b) || extra.contains(&b))
}

/// Keys: 1-63 of `A-Z a-z 0-9 - _ . /`, starting with a letter or digit;
/// values: 0-63 of `A-Z a-z 0-9 - _ .`.
pub fn validate(labels: &Labels) -> Result<(), SpecError> {
    if labels.len() > MAX_LABELS {
        return Err(SpecError::new("labels", format!("{} labels; a VM may carry at most {MAX_LABELS}", labels.len())));
    }
    for (k, v) in labels {
        check_key(k).map_err(|m| SpecError::new("labels", m))?;
        check_value(v).map_err(|m| SpecError::new(format!("labels.{k}"), m))?;
    }
    Ok(())
}

fn check_key(k: &str) -> Result<(), String> {
    let first_ok = k.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || k.len() > MAX_LABEL_LEN || !plain(k, b"/") {
        return Err(format!(
            "label key {k:?}: use 1 to {MAX_LABEL_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.' and '/', starting with a letter or digit"
        ));
    }
    Ok(())
}

fn check_value(v: &str) -> Result<(), String> {
    if v.len() > MAX_LABEL_LEN || !plain(v, b"") {
        return Err(format!("label value {v:?}: use at most {MAX_LABEL_LEN} characters of A-Z, a-z, 0-9, '-', '_' and '.'"));
    }
    Ok(())
}

/// One `key=value` selector of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub key: String,
    pub value: String,
}

impl Selector {
    /// Parses `key=value`; the message says what is wrong.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let Some((key, value)) = s.split_once('=') else {
            return Err(format!("label selector {s:?} is not key=value (e.g. team=web)"));
        };
        check_key(key)?;
        check_value(value)?;
        Ok(Selector { key: key.to_string(), value: value.to_string() })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        labels.get(&self.key).is_some_and(|v| *v == self.value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bad_keys_and_values_name_the_field() {
        assert_eq!(validate(&labels(&[("", "x")])).unwrap_err().field, "labels");
        assert_eq!(validate(&labels(&[("-a", "x")])).unwrap_err().field, "labels");
        assert_eq!(validate(&labels(&[("team", "a b")])).unwrap_err().field, "labels.team");
        assert_eq!(validate(&labels(&[("team", &"x".repeat(64))])).unwrap_err().field, "labels.team");
        let many: Labels = (0..=MAX_LABELS).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(validate(&many).unwrap_err().field, "labels");
        validate(&labels(&[("example.com/team", "web-1"), ("empty", "")])).unwrap();
    }

    #[test]
    fn selectors_match_exact_pairs_only() {
        let l = labels(&[("team", "web"), ("tier", "")]);
        assert!(Selector::parse("team=web").unwrap().matches(&l));
        assert!(!Selector::parse("team=we").unwrap().matches(&l));
        assert!(Selector::parse("tier=").unwrap().matches(&l));
        assert!(!Selector::parse("other=web").unwrap().matches(&l));
        assert!(Selector::parse("team").is_err());
        assert!(Selector::parse("=web").is_err());
    }
}
