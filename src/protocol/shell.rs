//! Quoting for a POSIX shell: the one way any word of ours reaches a shell
//! (remote command lines, generated init scripts).

/// Quotes one word so a POSIX shell reads it back unchanged; words made only
/// of characters no shell treats specially stay bare, for readability.
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn words_read_back_unchanged() {
        assert_eq!(quote("/usr/local/bin/shipjar"), "/usr/local/bin/shipjar");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("/it's here"), r"'/it'\''s here'");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(quote("`id`;x\ny"), "'`id`;x\ny'");
        assert_eq!(quote(""), "''");
    }
}
