//! POSIX shell quoting for the values we put into generated scripts.
//!
//! Owns: turning any string into one shell word that the shell reads back
//! as exactly that string. Inside single quotes nothing is special, except
//! the single quote itself, which cannot appear there at all: it is written
//! as `'\''` (close the quote, an escaped quote, reopen). A NUL byte cannot
//! be part of a shell word at all, so it is refused.

/// A string that cannot be a shell word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: contains a NUL byte, which no shell word can hold")]
pub struct QuoteError {
    pub what: String,
}

/// Quotes `s` as one POSIX shell word: `it's` becomes `'it'\''s'`, the
/// empty string becomes `''`. Every value is quoted, even "safe" ones: the
/// rule is simpler to check than an exception list.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Like [`shell_quote`], refusing NUL; `what` names the value in the error.
pub fn shell_quote_checked(what: &str, s: &str) -> Result<String, QuoteError> {
    if s.contains('\0') {
        return Err(QuoteError { what: what.to_string() });
    }
    Ok(shell_quote(s))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn quotes_are_escaped() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("''"), r"''\'''\'''");
    }

    #[test]
    fn nul_is_refused() {
        assert!(shell_quote_checked("args[0]", "a\0b").is_err());
    }

    /// The real check: /bin/sh reads every quoted value back exactly.
    #[test]
    fn sh_reads_back_every_value_exactly() {
        let values = [
            "plain",
            "",
            "with space",
            "it's",
            "'",
            "''",
            "\"double\"",
            "$HOME `id` $(id) ${x:-y}",
            "back\\slash\\",
            "new\nline",
            "tab\there",
            "*?[a-z] ~ # ; & | < > ( ) { }",
            "-n",
            "ünï ☃",
            "'\\''",
        ];
        let mut script = String::from("printf '[%s]\\n'");
        for v in values {
            script.push(' ');
            script.push_str(&shell_quote(v));
        }
        let out = Command::new("/bin/sh").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success());
        let expected: String = values.iter().map(|v| format!("[{v}]\n")).collect();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    }
}
